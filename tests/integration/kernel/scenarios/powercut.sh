# A real power cut under the server (tests/powercut.py: the disk keeps only what was synced). What the guest
# fsynced is there byte for byte after the cut and a restart, and a file it was still writing at the cut is whole
# once it closes it: the client writes what the server does not have, whether the cut lost it (the COMMIT at the
# close sees a new write verifier and the client sends the data again, RFC 1813 section 3.3.7) or it was not sent
# yet. tests/integration/test_durability.py shows the resend itself, call by call.
# disk: powercut
check "mount vers=3" mount_export || exit 1
dd if=/dev/urandom of=/tmp/synced bs=64k count=32 2>/dev/null
dd if=/dev/urandom of=/tmp/pending bs=64k count=32 2>/dev/null
synced=$(sha256sum /tmp/synced | cut -d' ' -f1)
pending=$(sha256sum /tmp/pending | cut -d' ' -f1)
exec 3>/mnt/pending
# fsync's COMMIT also makes both names durable (the disk journals directory changes, as ext4 does).
check "write and fsync 2 MiB" dd if=/tmp/synced of=/mnt/synced bs=64k conv=fsync
cat /tmp/pending >&3
host_request powercut >/dev/null
expect_eq "after the power cut the fsynced file is on the disk, byte for byte" "$(host_request sha256 synced)" "$synced"
exec 3>&-
expect_eq "the file still open at the cut is whole once the guest closes it" \
    "$(host_request sha256 pending)" "$pending"
echo 3 > /proc/sys/vm/drop_caches
expect_eq "and the guest reads both back from the server" \
    "$(sha256sum /mnt/synced /mnt/pending | cut -d' ' -f1 | tr '\n' ' ')" "$synced $pending "
check "umount" umount /mnt
exit $FAILED
