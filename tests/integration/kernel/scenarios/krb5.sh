# kerberos: yes
# Kerberos (RPCSEC_GSS) with the kernel client, one boot for the three flavours. A KDC runs in the test's namespace
# (the guest reaches it at 10.0.2.2); the server has its keytab (nfs/nfsserver) and exports $NFS_EXPORT_KRB5 with
# sec=krb5:krb5i:krb5p, $NFS_EXPORT_KRB5P with sec=krb5p, and $NFS_EXPORT with sec=sys. The guest's rpc.gssd has
# the machine keytab (host/guest: root's credentials, squashed by root_squash); $KRB5_USER (uid $KRB5_UID, a
# host user too) kinits from its keytab; $KRB5_OTHER (uid $KRB5_OTHER_UID) has no ticket. A tshark capture on the
# namespace's loopback shows a krb5p write holds none of the file's bytes, and the same write over sec=sys does.
# The Kerberos scenarios are nfsstack's (test_kernel.py), on its local backend (the server's files are checked).
check "the Kerberos client starts (cts, auth_rpcgss, rpcsec_gss_krb5, rpc_pipefs, rpc.gssd)" kerberos_client || exit 1
as_user() { su "$KRB5_USER" -s /bin/sh -c "$*"; }
as_other() { su "$KRB5_OTHER" -s /bin/sh -c "$*"; }
check "$KRB5_USER kinits from its keytab (the KDC answers the guest)" \
    as_user "kinit -k -t /etc/krb5-user.keytab $KRB5_USER@$KRB5_REALM" || exit 1
check "klist shows $KRB5_USER's ticket" sh -c "su $KRB5_USER -s /bin/sh -c klist | grep -q 'krbtgt/$KRB5_REALM@$KRB5_REALM'"
expect_eq "in /tmp/krb5cc_$KRB5_UID, the user's (where rpc.gssd looks)" "$(stat -c %u /tmp/krb5cc_$KRB5_UID 2>&1)" "$KRB5_UID"
krb5dir=$(basename "$NFS_EXPORT_KRB5")
refused="denied\|not permitted\|expired\|operation not supported"
yes "$KRB5_MARKER" | head -c 65536 > /tmp/marker.txt
marker_sum=$(sha256sum < /tmp/marker.txt | cut -d' ' -f1)
mkdir -p /k /s /p
for sec in krb5 krb5i krb5p; do
    check "mount -o sec=$sec of the Kerberos export" \
        mount -t nfs -o "vers=3,sec=$sec" "$NFS_SERVER:$NFS_EXPORT_KRB5" /k || continue
    check "$sec: /proc/mounts shows sec=$sec" sh -c "grep ' /k nfs ' /proc/mounts | grep -q 'sec=$sec,'"
    check "$sec: the user with a ticket writes a file" as_user "echo written-over-$sec > /k/$sec.txt"
    echo 3 > /proc/sys/vm/drop_caches
    expect_eq "$sec: and reads it back" "$(as_user cat /k/$sec.txt 2>&1)" "written-over-$sec"
    expect_eq "$sec: the server's file belongs to the user's uid" \
        "$(host_request stat "../$krb5dir/$sec.txt" | cut -d: -f1)" "$KRB5_UID"
    check "$sec: the user lists the directory" sh -c "su $KRB5_USER -s /bin/sh -c 'ls /k' | grep -qx $sec.txt"
    expect_fail "$sec: a user without a ticket cannot read the file" "$refused" as_other cat /k/$sec.txt
    expect_fail "$sec: nor create one" "$refused" as_other "echo by-other > /k/$sec-other.txt"
    expect_eq "$sec: and the server has no such file" "$(host_request stat "../$krb5dir/$sec-other.txt")" \
        "error No such file or directory"
    if [ "$sec" = krb5p ]; then
        expect_eq "krb5p: tshark captures the namespace's port 2049" "$(host_request capture-start)" ok
        check "krb5p: the user writes 64 KiB of a marker" as_user "cp /tmp/marker.txt /k/marker.txt && sync"
        echo 3 > /proc/sys/vm/drop_caches
        check "krb5p: and reads it back (the server's READ replies)" \
            sh -c "su $KRB5_USER -s /bin/sh -c 'cat /k/marker.txt' | sha256sum | grep -q $marker_sum"
        got=$(host_request capture-stop)
        echo "INFO: krb5p capture (bytes, marker hits): $got"
        check "krb5p: the capture saw the write and the read (more than 128 KiB)" test "${got%% *}" -gt 131072 2>/dev/null
        expect_eq "krb5p: the capture holds none of the file's bytes (no marker)" "${got##* }" 0
        expect_eq "krb5p: the server's copy is the file" "$(host_request sha256 "../$krb5dir/marker.txt")" "$marker_sum"
    fi
    check "umount sec=$sec" umount /k
done

# Wrong flavours: AUTH_SYS to the Kerberos export, krb5 to the krb5p-only one.
expect_fail "an AUTH_SYS mount (sec=sys) of the Kerberos export is refused" "$refused" \
    mount -t nfs -o vers=3,sec=sys "$NFS_SERVER:$NFS_EXPORT_KRB5" /k || umount /k 2>/dev/null
expect_eq "AUTH_SYS: GETATTR of the Kerberos export's root is answered (RFC 2623 2.3.2), its READDIR refused" \
    "$(host_request sys-getattr -krb5)" "OK ACCES"
expect_fail "a sec=krb5 mount of the krb5p-only export is refused" "$refused" \
    mount -t nfs -o vers=3,sec=krb5 "$NFS_SERVER:$NFS_EXPORT_KRB5P" /p || umount /p 2>/dev/null
if check "a sec=krb5p mount of it works" mount -t nfs -o vers=3,sec=krb5p "$NFS_SERVER:$NFS_EXPORT_KRB5P" /p; then
    check "and the user writes there" as_user "echo only-krb5p > /p/f.txt"
    check "umount the krb5p-only export" umount /p
fi

# The sec=sys export beside them keeps working, and its traffic is in the clear (the capture's control).
expect_eq "an AUTH_SYS GETATTR and READDIR of the sec=sys export work" "$(host_request sys-getattr)" "OK OK"
check "mount the sec=sys export" mount -t nfs -o vers=3,sec=sys "$NFS_SERVER:$NFS_EXPORT" /s || exit 1
check "sys: the user writes a file as its uid" as_other "echo by-sys > /s/sys.txt"
expect_eq "sys: the server's file belongs to that uid" "$(host_request stat sys.txt | cut -d: -f1)" "$KRB5_OTHER_UID"
expect_eq "sys: tshark captures the namespace's port 2049" "$(host_request capture-start)" ok
check "sys: the user writes 64 KiB of the marker" as_user "cp /tmp/marker.txt /s/marker.txt && sync"
got=$(host_request capture-stop)
echo "INFO: sys capture (bytes, marker hits): $got"
check "sys: the capture holds the marker (it sees the traffic)" test "${got##* }" -gt 0 2>/dev/null
check "umount the sec=sys export" umount /s
exit $FAILED
