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
# host_request WORDS: ask the harness to do something (e.g. restart the server) and wait for its "ok".
host_request() {
    echo "@@HOST $*"
    read -r reply
}
# mount_export [OPTIONS]: mount $NFS_SERVER:$NFS_EXPORT on /mnt the way a user would.
mount_export() {
    mount -t nfs -o "vers=3${1:+,$1}" "$NFS_SERVER:$NFS_EXPORT" /mnt
}
