# Mount over TCP, write a file, read it back, list the directory, unmount.
check "mount vers=3" mount_export || exit 1
check "write a file" sh -c 'echo "hello from the guest" > /mnt/hello.txt'
check "write 1 MiB" sh -c 'dd if=/dev/urandom of=/tmp/r bs=64k count=16 2>/dev/null && cp /tmp/r /mnt/r && sync'
if server_disk; then
    expect_eq "the server's copy is the 1 MiB written" "$(host_request sha256 r)" "$(sha256sum /tmp/r | cut -d' ' -f1)"
    expect_eq "the server's copy of the small file" "$(host_request sha256 hello.txt)" \
        "$(echo "hello from the guest" | sha256sum | cut -d' ' -f1)"
fi
echo 3 > /proc/sys/vm/drop_caches  # what is read next comes from the server, not the guest's page cache
check "read it back" sh -c 'test "$(cat /mnt/hello.txt)" = "hello from the guest"'
check "1 MiB read back from the server" cmp /tmp/r /mnt/r
check "list the directory" sh -c 'ls /mnt | grep -qx hello.txt && ls /mnt | grep -qx r'
check "remove" rm /mnt/hello.txt /mnt/r
check "umount" umount /mnt
exit $FAILED
