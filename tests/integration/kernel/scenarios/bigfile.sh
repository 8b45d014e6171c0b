# 256 MiB written and read back with equal checksums, equal to the server's copy.
check "mount vers=3" mount_export || exit 1
# tee's exit status is kept (a pipeline's status is its last command's): it says whether every byte was written.
written=$( (dd if=/dev/urandom bs=1M count=256 2>/dev/null | tee /mnt/big.bin; echo $? > /tmp/tee.status) \
    | sha256sum | cut -d" " -f1)
expect_eq "write 256 MiB (tee's exit status)" "$(cat /tmp/tee.status)" 0
check "size" sh -c 'test "$(stat -c %s /mnt/big.bin)" = 268435456'
sync
echo 3 > /proc/sys/vm/drop_caches
check "read back: same checksum" sh -c "test \"\$(sha256sum /mnt/big.bin | cut -d' ' -f1)\" = $written"
on_server=$(host_request sha256 big.bin)
expect_eq "server's copy: same checksum" "$on_server" "$written"
check "remove" rm /mnt/big.bin
check "umount" umount /mnt
exit $FAILED
