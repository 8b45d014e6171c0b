# Listings the server keeps (READDIRPLUS replies, nfs3/local/listings.py) never hide a change: one made through another
# mount of the export, and one made on the server behind nfsd's back, both show in the next `ls -l` after the
# guest drops its own caches (so the sizes come from the new READDIRPLUS replies).
check "mount vers=3" mount_export || exit 1
mkdir -p /mnt2
check "a second mount, its caches its own" mount -t nfs -o vers=3,nosharecache "$NFS_SERVER:$NFS_EXPORT" /mnt2
mkdir /mnt/l
check "200 files" sh -c 'cd /mnt/l && for i in $(seq 1 200); do echo x > f$i; done'
fresh_size() { sync; echo 3 > /proc/sys/vm/drop_caches; ls -l "$1" | awk -v n="$2" '$NF == n { print $5 }'; }
expect_eq "listed size" "$(fresh_size /mnt/l f7)" 2
expect_eq "listed again (kept by the server)" "$(fresh_size /mnt/l f7)" 2
check "append through the other mount" sh -c 'printf 0123456789 >> /mnt2/l/f7'
expect_eq "the first mount lists the new size" "$(fresh_size /mnt/l f7)" 12
check "chmod through the other mount" chmod 600 /mnt2/l/f8
expect_eq "the first mount lists the new mode" "$(sync; echo 3 > /proc/sys/vm/drop_caches; ls -l /mnt/l | awk '$NF == "f8" { print $1 }')" "-rw-------"
check "mkdir and a file in it, through the other mount" sh -c 'mkdir /mnt2/l/sub && echo y > /mnt2/l/sub/g'
expect_eq "the first mount lists both" "$(sync; echo 3 > /proc/sys/vm/drop_caches; ls /mnt/l/sub)" g
if [ "$SERVER" = nfsstack ]; then  # nfs-ganesha keeps attributes up to 60 s by design: not its promise
    fresh_size /mnt/l f9 >/dev/null
    expect_eq "append on the server, behind nfsd's back" "$(host_request append l/f9 abcdefgh)" ok
    expect_eq "the guest lists the server's size" "$(fresh_size /mnt/l f9)" 10
fi
check "remove through the other mount" rm /mnt2/l/f10
expect_eq "the first mount no longer lists it" "$(sync; echo 3 > /proc/sys/vm/drop_caches; ls /mnt/l | grep -cx f10)" 0
check "umount the second" umount /mnt2
check "umount" umount /mnt
exit $FAILED
