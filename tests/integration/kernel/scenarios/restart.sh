# The server restarts while the guest keeps its mount: open files and listings keep working (no ESTALE).
check "mount vers=3" mount_export || exit 1
check "create a file" sh -c 'echo before > /mnt/kept.txt && mkdir /mnt/dir && sync'
exec 3</mnt/kept.txt
host_request restart >/dev/null
echo 3 > /proc/sys/vm/drop_caches  # what follows must come from the server, not the page cache
check "read through a file opened before the restart" sh -c 'read -r line <&3 && test "$line" = before'
check "read the file again by name" sh -c 'test "$(cat /mnt/kept.txt)" = before'
check "write after the restart" sh -c 'echo after >> /mnt/kept.txt && test "$(tail -n 1 /mnt/kept.txt)" = after'
check "ls after the restart" sh -c 'ls /mnt | grep -qx dir'
exec 3<&-
check "umount" umount /mnt
exit $FAILED
