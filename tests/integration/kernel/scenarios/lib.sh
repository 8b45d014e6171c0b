# Helpers every scenario gets (prepended to the scenario by the harness).
# check NAME COMMAND...: run COMMAND, print "PASS: NAME" or "FAIL: NAME" with what it printed.
FAILED=0
check() {
    name=$1; shift
    if out=$("$@" 2>&1); then
        echo "PASS: $name"
    else
        echo "FAIL: $name: $(echo "$out" | tail -n 5 | tr '\n' '|')"
        FAILED=1
        return 1
    fi
}
# server_disk: whether the server's files are on the host's disk, where host_request sha256/stat/append see them
# (not with nfsstack's memory backend).
server_disk() {
    [ "${SERVER_DISK:-yes}" = yes ]
}
# server_identities: whether the server acts as each client (not a plain user's nfsstack, which acts as itself for
# every client).
server_identities() {
    [ "${SERVER_IDENTITIES:-yes}" = yes ]
}
# host_request WORDS: ask the harness to do something (e.g. restart the server) and wait for its "ok".
host_request() {
    echo "@@HOST $*" >/dev/console
    read -r reply </dev/console
    echo "$reply"
}
# mount_export [OPTIONS]: mount $NFS_SERVER:$NFS_EXPORT on /mnt the way a user would.
mount_export() {
    mount -t nfs -o "vers=3${MOUNT_OPTIONS:+,$MOUNT_OPTIONS}${1:+,$1}" "$NFS_SERVER:$NFS_EXPORT" /mnt
}
# mount_at EXPORT DIR: mount another export of the server.
mount_at() {
    mkdir -p "$2" && mount -t nfs -o "vers=3${MOUNT_OPTIONS:+,$MOUNT_OPTIONS}" "$NFS_SERVER:$1" "$2"
}
# expect_fail NAME PATTERN COMMAND...: the command must fail with a message matching PATTERN.
expect_fail() {
    name=$1; pattern=$2; shift 2
    if out=$("$@" 2>&1); then
        echo "FAIL: $name: succeeded, expected '$pattern'"; FAILED=1; return 1
    elif echo "$out" | grep -qi "$pattern"; then
        echo "PASS: $name"
    else
        echo "FAIL: $name: $(echo "$out" | tail -n 3 | tr '\n' '|') (expected '$pattern')"; FAILED=1; return 1
    fi
}
# expect_eq NAME GOT WANT: a check that shows both values when they differ.
expect_eq() {
    if [ "$2" = "$3" ]; then echo "PASS: $1"; else echo "FAIL: $1: got '$2', want '$3'"; FAILED=1; return 1; fi
}
# kerberos_client: the guest's Kerberos client (scenarios with the header "kerberos: yes", whose boot brings the
# modules, keytabs, krb5.conf and programs: kerberos.py): the GSS modules after sunrpc, rpc_pipefs, and rpc.gssd
# in the background, logging to the console.
kerberos_client() {
    for m in $KRB5_MODULES; do insmod "/modules/krb5/$m.ko" || return 1; done
    mkdir -p /var/lib/nfs/rpc_pipefs && mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs || return 1
    rpc.gssd -f -v </dev/null >/dev/console 2>&1 &
    for i in $(seq 50); do
        [ -e /var/lib/nfs/rpc_pipefs/gssd/clntXX/info ] && break
        kill -0 $! 2>/dev/null || { echo "rpc.gssd exited"; return 1; }
        sleep 0.1
    done
    kill -0 $! 2>/dev/null
}
