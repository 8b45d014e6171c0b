# Data fsynced in the guest is on the server's disk when fsync returns; SIGKILL of the server loses none of it.
check "mount vers=3" mount_export || exit 1
sum=$(dd if=/dev/urandom bs=64k count=64 2>/dev/null | tee /tmp/data | sha256sum | cut -d" " -f1)
check "write and fsync 4 MiB" dd if=/tmp/data of=/mnt/safe.bin bs=64k conv=fsync
on_disk=$(host_request sha256 safe.bin)
expect_eq "on the server's disk when fsync returned" "$on_disk" "$sum"
host_request kill >/dev/null
on_disk=$(host_request sha256 safe.bin)
expect_eq "after SIGKILL and a restart: still on disk" "$on_disk" "$sum"
echo 3 > /proc/sys/vm/drop_caches
check "and the guest reads it back" sh -c "test \"\$(sha256sum /mnt/safe.bin | cut -d' ' -f1)\" = $sum"
check "umount" umount /mnt
exit $FAILED
