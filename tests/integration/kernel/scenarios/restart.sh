# The server restarts while the guest keeps its mount: a file opened before the restart is read and written
# through the same descriptor after it, and names and listings keep working (no ESTALE).
check "mount vers=3" mount_export || exit 1
check "create a file" sh -c 'echo before > /mnt/kept.txt && mkdir /mnt/dir && sync'
exec 3<>/mnt/kept.txt
host_request restart >/dev/null
echo 3 > /proc/sys/vm/drop_caches  # what follows must come from the server, not the page cache
check "read through the descriptor opened before the restart" sh -c 'read -r line <&3 && test "$line" = before'
check "write through the same descriptor" sh -c 'echo through-fd >&3'
exec 3>&-
check "the server's copy holds both lines" sh -c \
    'test "$(cat /mnt/kept.txt | tr "\n" " ")" = "before through-fd " && test "$(stat -c %s /mnt/kept.txt)" = 18'
expect_eq "and so does the server's disk" "$(host_request stat kept.txt | cut -d: -f4)" 18
check "write by name after the restart" sh -c 'echo after >> /mnt/kept.txt && test "$(tail -n 1 /mnt/kept.txt)" = after'
check "ls after the restart" sh -c 'ls /mnt | grep -qx dir'
# A file renamed on the server's own disk while the server was down: its handle still leads to it.
check "create another file" sh -c 'echo old-name > /mnt/dir/moved.txt && sync'
exec 4<>/mnt/dir/moved.txt
host_request restart-renaming dir/moved.txt renamed.txt >/dev/null
echo 3 > /proc/sys/vm/drop_caches
check "read a file renamed on the server while it was down" sh -c 'read -r line <&4 && test "$line" = old-name'
check "and write it" sh -c 'echo written >&4'
exec 4>&-
check "the new name has both lines" sh -c 'test "$(cat /mnt/renamed.txt | tr "\n" " ")" = "old-name written "'
# The server's machine rebooted: its kernel no longer knows in which directory a file lies (a file opened by its
# handle is connected to none): a handle the client kept still leads to the file.
check "create a file in a directory" sh -c 'echo deep > /mnt/dir/deep.txt && sync'
exec 5<>/mnt/dir/deep.txt
host_request reboot >/dev/null
echo 3 > /proc/sys/vm/drop_caches
check "read a file kept open across the server's reboot" sh -c 'read -r line <&5 && test "$line" = deep'
check "and write it" sh -c 'echo again >&5'
exec 5>&-
check "it has both lines" sh -c 'test "$(cat /mnt/dir/deep.txt | tr "\n" " ")" = "deep again "'
check "umount" umount /mnt
exit $FAILED
