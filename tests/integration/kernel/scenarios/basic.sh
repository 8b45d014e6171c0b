# Mount over TCP, write a file, read it back, list the directory, unmount.
check "mount vers=3" mount_export || exit 1
check "write a file" sh -c 'echo "hello from the guest" > /mnt/hello.txt'
check "read it back" sh -c 'test "$(cat /mnt/hello.txt)" = "hello from the guest"'
check "1 MiB round trip" sh -c 'dd if=/dev/urandom of=/tmp/r bs=64k count=16 2>/dev/null && cp /tmp/r /mnt/r && sync && cmp /tmp/r /mnt/r'
check "list the directory" sh -c 'ls /mnt | grep -qx hello.txt && ls /mnt | grep -qx r'
check "remove" rm /mnt/hello.txt /mnt/r
check "umount" umount /mnt
exit $FAILED
