# Permissions are the kernel's: a non-root guest user is refused where the mode bits refuse it and
# allowed where they allow it; root is squashed on a root_squash export; a ro export refuses writes.
check "mount vers=3" mount_export || exit 1
as_user() { su user -s /bin/sh -c "$*"; }
if server_identities; then
    mkdir -p /mnt/private /mnt/shared
    chmod 700 /mnt/private; chmod 755 /mnt/shared
    echo secret > /mnt/private/f; echo public > /mnt/shared/r; chmod 644 /mnt/shared/r
    mkdir -p /mnt/mine && chown 1000:1000 /mnt/mine
    expect_fail "user cannot list a 0700 root directory" "denied" as_user ls /mnt/private
    expect_fail "user cannot read inside it" "denied" as_user cat /mnt/private/f
    check "user can read a 0644 file" sh -c 'test "$(su user -s /bin/sh -c "cat /mnt/shared/r")" = public'
    expect_fail "user cannot write a 0644 root file" "denied" as_user 'echo x >> /mnt/shared/r'
    expect_fail "user cannot create in a 0755 root directory" "denied" as_user touch /mnt/shared/new
    check "user can create in their own directory" as_user 'echo mine > /mnt/mine/f && test "$(cat /mnt/mine/f)" = mine'
    check "the file is theirs" sh -c 'test "$(stat -c %u:%g /mnt/mine/f)" = 1000:1000'
    check "user may chmod their file" as_user chmod 600 /mnt/mine/f
    expect_fail "user may not chown to root" "not permitted" as_user chown 0 /mnt/mine/f
    mkdir -p /mnt/sticky && chmod 1777 /mnt/sticky
    check "root gives a symlink to the user with chown -h" sh -c 'ln -s nowhere /mnt/sticky/link && chown -h 1000:1000 /mnt/sticky/link'
    check "the user renames their symlink in a sticky directory" as_user mv /mnt/sticky/link /mnt/sticky/link2
    check "and removes it" as_user rm /mnt/sticky/link2
    check "mode change lets the user in" sh -c 'chmod 755 /mnt/private && su user -s /bin/sh -c "ls /mnt/private" | grep -qx f'
else
    # A plain user's server acts as itself for every client: what root and a user make is the server's.
    check "root makes a file" sh -c 'echo r > /mnt/by-root-plain'
    check "a user makes a file" as_user 'echo u > /mnt/by-user-plain'
    expect_eq "both belong to the server's user" \
        "$(stat -c %u /mnt/by-root-plain):$(stat -c %u /mnt/by-user-plain)" "$SERVER_UID:$SERVER_UID"
fi
check "mount the root_squash export" mount_at "$NFS_EXPORT_SQUASH" /sq
check "root's new file belongs to nobody" sh -c 'touch /sq/by-root && test "$(stat -c %u /sq/by-root)" = 65534'
# knfsd (and nfsstack) refuse with EPERM; nfs-ganesha squashes the requested owner to nobody instead, so
# the check is what both guarantee: root's request never makes the file root's.
check "squashed root cannot give a file to root" sh -c 'chown 0 /sq/by-root 2>/dev/null; test "$(stat -c %u /sq/by-root)" = 65534'
if [ "$SERVER" = nfsstack ]; then
    expect_fail "squashed root's chown is refused with EPERM, as by knfsd" "not permitted" chown 0 /sq/by-root
fi
check "mount the ro export" mount_at "$NFS_EXPORT_RO" /ro
if server_disk; then  # the harness put the file there (a memory backend's ro export is empty)
    check "read from the ro export" sh -c 'test "$(cat /ro/readme.txt)" = "read only"'
fi
expect_fail "ro export refuses a new file with EROFS" "read-only" touch /ro/new
if server_disk; then
    # Writing an existing file is refused by ACCESS already (no MODIFY bit on a ro export), so the client says
    # EACCES before any WRITE is sent: knfsd's nfsd_access and nfs-ganesha answer the same way.
    expect_fail "ro export refuses writing an existing file" "denied\|read-only" sh -c 'echo x >> /ro/readme.txt'
fi
expect_fail "ro export refuses mkdir with EROFS" "read-only" mkdir /ro/d
check "umount all" sh -c 'umount /ro && umount /sq && umount /mnt'
exit $FAILED
