# guest-programs: /usr/bin/setfacl /usr/bin/getfacl
# POSIX ACLs over NFS_ACL (program 100227 beside nfsd): setfacl on the client is the server file's ACL, and the
# server enforces it for the user it names; a directory's default ACL is inherited by a file created over NFS;
# with no_acl the client sees and sets only the mode bits. The ACL checks are nfsstack's alone; setfacl and
# getfacl are the host's (Debian package acl), copied in for this boot.
check "setfacl and getfacl in the guest (the host's Debian package acl: tests/install-deps.sh)" \
    sh -c 'command -v setfacl && command -v getfacl' || exit 1
check "mount vers=3" mount_export || exit 1
grep -q '^other:' /etc/passwd || echo 'other:x:1001:1001::/tmp:/bin/sh' >> /etc/passwd
as_user() { su user -s /bin/sh -c "$*"; }
as_other() { su other -s /bin/sh -c "$*"; }
echo data > /mnt/f && chmod 600 /mnt/f
# nfsstack's promise: nfs-ganesha may be built without NFS_ACL, and decides access on ACLs itself.
acl_checks=no
if [ "$SERVER" = nfsstack ] && server_identities; then
    check "setfacl -m u:1000:rw on a root file of mode 0600" setfacl -m u:1000:rw /mnt/f && acl_checks=yes
fi
if [ "$acl_checks" = yes ]; then
    check "getfacl on the client shows the entry" sh -c 'getfacl -n /mnt/f | grep -qx "user:1000:rw-"'
    expect_eq "the server's file has the ACL (its getfacl)" "$(host_request getfacl f)" \
        "user::rw-,user:1000:rw-,group::---,mask::rw-,other::---"
    check "user 1000 writes the file over NFS" as_user 'echo by-1000 >> /mnt/f'
    check "and reads it" sh -c 'su user -s /bin/sh -c "cat /mnt/f" | grep -qx by-1000'
    expect_fail "user 1001 cannot write it" "denied" as_other 'echo by-1001 >> /mnt/f'
    expect_fail "nor read it" "denied" as_other cat /mnt/f
    check "setfacl -x u:1000 takes the entry away" setfacl -x u:1000 /mnt/f
    expect_fail "and user 1000 cannot write any more" "denied" as_user 'echo again >> /mnt/f'
    mkdir /mnt/d && chmod 755 /mnt/d
    check "setfacl -d -m u:1000:rwx on a directory" setfacl -d -m u:1000:rwx /mnt/d
    expect_eq "the server's directory has the default ACL" "$(host_request getfacl-default d)" \
        "user::rwx,user:1000:rwx,group::r-x,mask::rwx,other::r-x"
    check "root creates a file in it over NFS" sh -c 'echo new > /mnt/d/new'
    inherited=$(host_request getfacl d/new)
    case "$inherited" in
        *user:1000:rwx*mask::rw-*) echo "PASS: the server's new file inherited the entry" ;;
        *) echo "FAIL: the server's new file inherited the entry: got '$inherited'"; FAILED=1 ;;
    esac
    check "user 1000 writes the inherited file" as_user 'echo by-1000 >> /mnt/d/new'
    expect_fail "user 1001 cannot" "denied" as_other 'echo by-1001 >> /mnt/d/new'
    expect_fail "a user not owning the file cannot set its ACL" "not permitted" as_user setfacl -m u:1001:rw /mnt/f
fi
if [ "$SERVER" = nfsstack ]; then
    check "mount the no_acl export" mount_at "$NFS_EXPORT_NOACL" /na
    echo x > /na/f && chmod 640 /na/f
    expect_fail "setfacl on a no_acl export is not supported" "not supported" setfacl -m u:1000:rw /na/f
    expect_eq "getfacl shows the mode bits" "$(getfacl -n /na/f 2>/dev/null | grep -v '^#' | grep . | tr '\n' ,)" \
        "user::rw-,group::r--,other::---,"
    check "chmod still works there" sh -c 'chmod 604 /na/f && test "$(stat -c %a /na/f)" = 604'
    check "and the mode bits decide for user 1000" as_user cat /na/f
    echo y > /na/g && chmod 600 /na/g
    expect_eq "the server gives user 1000 rw on a file there (setfacl on the server)" \
        "$(host_request grant "../$(basename "$NFS_EXPORT_NOACL")/g" 1000)" ok
    expect_eq "the client sees only its mode bits, the mask as the group's" \
        "$(getfacl -n /na/g 2>/dev/null | grep -v '^#' | grep . | tr '\n' ,)" "user::rw-,group::rw-,other::---,"
    check "umount the no_acl export" umount /na
fi
check "umount" umount /mnt
exit $FAILED
