# network: tap
# The kernel client mounts over IPv6 (the tap link's fd00:2::/64): it asks the server's rpcbind for mountd
# and nfsd over IPv6 (rpcbind v3/v4: the portmapper v2 is IPv4-only), mounts, writes and reads back.
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
check "guest IPv6 address" ip -6 addr add "$GUEST6/64" dev eth0 || exit 1
for i in $(seq 50); do ping -6 -c 1 -W 1 "$NFS_SERVER6" >/dev/null 2>&1 && break; sleep 0.2; done
check "server reachable over IPv6" ping -6 -c 1 -W 2 "$NFS_SERVER6"
check "rpcbind v4 over tcp6 names nfsd" sh -c "rpcinfo -T tcp6 $NFS_SERVER6 100003 3"
check "mount vers=3 over IPv6" mount -t nfs -o vers=3,proto=tcp6,mountproto=tcp6 "[$NFS_SERVER6]:$NFS_EXPORT" /mnt \
    || exit 1
check "the mount is over IPv6" sh -c "grep ' /mnt nfs ' /proc/mounts | grep -q 'addr=$NFS_SERVER6'"
check "write a file" sh -c 'echo "hello over IPv6" > /mnt/v6.txt && sync'
expect_eq "the server's copy" "$(host_request sha256 v6.txt)" "$(echo "hello over IPv6" | sha256sum | cut -d' ' -f1)"
echo 3 > /proc/sys/vm/drop_caches
check "read it back" sh -c 'test "$(cat /mnt/v6.txt)" = "hello over IPv6"'
check "remove" rm /mnt/v6.txt
check "umount" umount /mnt
exit $FAILED
