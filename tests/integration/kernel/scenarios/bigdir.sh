# A directory of 10,000 files lists exactly 10,000 names, with ls and with find.
check "mount vers=3" mount_export || exit 1
mkdir /mnt/big
check "create 10,000 files" sh -c 'cd /mnt/big && seq 1 10000 | sed "s/^/file-/" | xargs touch'
check "ls lists 10,000 names" sh -c 'test "$(ls /mnt/big | wc -l)" = 10000'
check "ls names are distinct" sh -c 'test "$(ls /mnt/big | sort -u | wc -l)" = 10000'
check "find lists 10,000 files" sh -c 'test "$(find /mnt/big -type f | wc -l)" = 10000'
check "after deleting every other file, 5,000" sh -c 'cd /mnt/big && seq 2 2 10000 | sed "s/^/file-/" | xargs rm && test "$(ls | wc -l)" = 5000 && test "$(find . -type f | wc -l)" = 5000'
check "remove the rest" sh -c 'rm -r /mnt/big && test ! -e /mnt/big'
check "umount" umount /mnt
exit $FAILED
