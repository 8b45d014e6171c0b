# Names and metadata: rename, hard links, symlinks, fifos, chmod, chown, touch -d, truncate.
check "mount vers=3" mount_export || exit 1
cd /mnt
check "mkdir" mkdir -p a/b c
check "rename inside a directory" sh -c 'echo one > a/f1 && mv a/f1 a/f2 && test ! -e a/f1 && test "$(cat a/f2)" = one'
check "rename across directories" sh -c 'mv a/f2 c/f3 && test ! -e a/f2 && test "$(cat c/f3)" = one'
check "rename a directory" sh -c 'mv a/b c/b2 && test -d c/b2 && test ! -e a/b'
check "rename over an existing file" sh -c 'echo two > c/f4 && mv c/f4 c/f3 && test "$(cat c/f3)" = two'
check "hard link" sh -c 'ln c/f3 a/hard && test "$(stat -c %h c/f3)" = 2 && test "$(stat -c %i c/f3)" = "$(stat -c %i a/hard)"'
check "hard link shares data" sh -c 'echo three >> a/hard && tail -n 1 c/f3 | grep -qx three'
check "symlink" sh -c 'ln -s ../c/f3 a/sym && test -L a/sym && test "$(readlink a/sym)" = ../c/f3 && test "$(head -n 1 a/sym)" = two'
check "dangling symlink" sh -c 'ln -s nowhere a/dangle && test -L a/dangle && ! test -e a/dangle'
check "mkfifo" sh -c 'mkfifo a/fifo && test -p a/fifo'
check "chmod" sh -c 'chmod 640 c/f3 && test "$(stat -c %a c/f3)" = 640 && chmod 4755 c/f3 && test "$(stat -c %a c/f3)" = 4755'
if server_identities; then
    check "chown (no_root_squash)" sh -c 'chown 1000:1000 c/f3 && test "$(stat -c %u:%g c/f3)" = 1000:1000'
fi
check "touch -d" sh -c 'touch -d "2001-02-03 04:05:06" c/f3 && test "$(date -r c/f3 +%Y-%m-%dT%H:%M:%S)" = 2001-02-03T04:05:06'
check "truncate up" sh -c 'truncate -s 100000 c/f3 && test "$(stat -c %s c/f3)" = 100000 && test "$(tail -c 10 c/f3 | od -An -tx1 | tr -d " ")" = 00000000000000000000'
check "truncate down" sh -c 'truncate -s 3 c/f3 && test "$(cat c/f3)" = two'
check "remove a symlink, not its target" sh -c 'rm a/sym && test -e c/f3'
if server_identities; then
    check "chown -h changes the symlink, not its target" sh -c 'ln -s nowhere a/owned && chown -h 1000:1000 a/owned && test "$(stat -c %u:%g a/owned)" = 1000:1000'
fi
if server_disk && server_identities; then
    seen=$(host_request stat a/owned)
    expect_eq "the server's symlink is owned as chown -h set it" "$seen" "$(stat -c '%u:%g:0o%a:%s:%h' a/owned)"
    expect_eq "and the guest sees the owner it set" "${seen%%:0o*}" "1000:1000"
fi
check "rmdir of a non-empty directory fails" sh -c '! rmdir c 2>/dev/null && test -d c'
if server_disk; then
    seen=$(host_request stat c/f3)
    expect_eq "server and client agree on owner, mode, size and links" "$seen" "$(stat -c '%u:%g:0o%a:%s:%h' c/f3)"
fi
cd /
check "umount" umount /mnt
exit $FAILED
