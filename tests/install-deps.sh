#!/usr/bin/env bash
# Install what the test suite needs on Debian 12, as root: the real clients (rpcinfo, showmount, libnfs tools),
# network namespaces, qemu with the guest's packages for the kernel-client tests (gcc builds the guest's static
# lock helper; setfacl and getfacl of Debian's acl are copied into the guest for the ACL scenario), nfs-ganesha to
# compare with, promtool (Debian's prometheus), libfuse 3 for the durability tests'
# powercut filesystem (tests/powercut.py, through the Python package mfusepy of the test extra), an MIT Kerberos
# realm for the Kerberos tests (tests/kdc.py; libkrb5-dev builds the gssapi package) with tshark to look into their
# packets, and the Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    rpcbind nfs-common libnfs-utils iproute2 util-linux qemu-system-x86 busybox-static nfs-ganesha nfs-ganesha-vfs \
    gcc libc6-dev prometheus fuse3 libfuse3-3 systemd acl \
    krb5-kdc krb5-admin-server krb5-user libkrb5-dev tshark \
    >/dev/null
python3 -m pip install -q '.[test]'
# The guest image (Debian's kernel and busybox, downloaded with apt) is built once into .cache/.
python3 -c 'from tests.integration.kernel.vm import build_image; print("guest image:", build_image().initrd)'
