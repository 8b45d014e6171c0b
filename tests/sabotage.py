#!/usr/bin/env python3
"""The sabotage run: break one promise at a time, in a copy of the tree, and show which test catches it.

    python3 tests/sabotage.py            # every sabotage; exit 1 if one survives or no longer applies
    python3 tests/sabotage.py --list     # their names and the promise each breaks
    python3 tests/sabotage.py NAME ...   # only these

Each sabotage replaces a few exact lines of ``src/`` (each must occur exactly once, so a sabotage that no longer
matches the code fails the run instead of silently testing nothing) in a fresh copy of the repository, then runs
only the tests meant to catch it there.  A sabotage is caught when pytest reports failed tests (exit status 1);
the report names the first one.  A copy that cannot even be collected (status 2-5) counts as not caught: the
sabotage must break behaviour, not syntax.  The tests themselves pass on the unsabotaged tree (CI runs the whole
suite first), so a failure here is the sabotage's doing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sabotage:
    name: str
    promise: str  # what the code promises, which this sabotage breaks
    path: str  # file under the repository
    edits: tuple[tuple[str, str], ...]  # (exact old text, its replacement), each old text found exactly once
    tests: tuple[str, ...]  # pytest node ids or paths run against the sabotaged copy


FRAME = "src/nfsstack/nfs3/frame.py"
LOCAL = "src/nfsstack/nfs3/local/filesystem.py"
NFS3 = "tests/unit/test_nfs3.py"
STABLE_TESTS = "tests/unit/test_stable_writes.py"
#: The power cut first: the sabotages of a sync must lose data where it counts, not only skip a call.
DURABILITY = "tests/integration/test_durability.py::test_power_cut_keeps_what_was_committed"
STABLE = "            if stable != UNSTABLE and call.options.sync:\n"

SABOTAGES = (
    Sabotage(
        "commit-without-sync", "COMMIT answers only after the file's data reached stable storage", LOCAL,
        (("        return self._sync(call, False, sfd, lambda: None)\n", "        return None\n"),),
        (DURABILITY, f"{STABLE_TESTS}::test_stable_writes_and_commit_sync_on_every_path"),
    ),
    Sabotage(
        "file-sync-inline-without-sync", "a FILE_SYNC WRITE run inline syncs before its reply", LOCAL,
        ((STABLE, "            if stable != UNSTABLE and call.options.sync and (call.threaded or call.ring):\n"),),
        (DURABILITY, f"{STABLE_TESTS}::test_stable_writes_and_commit_sync_on_every_path"),
    ),
    Sabotage(
        "file-sync-ring-without-sync", "a FILE_SYNC WRITE written by io_uring syncs before its reply", LOCAL,
        ((STABLE, "            if stable != UNSTABLE and call.options.sync and not call.ring:\n"),),
        (DURABILITY, f"{STABLE_TESTS}::test_stable_writes_and_commit_sync_on_every_path"),
    ),
    Sabotage(
        "file-sync-pool-without-sync", "a FILE_SYNC WRITE run in the thread pool syncs before its reply", LOCAL,
        ((STABLE, "            if stable != UNSTABLE and call.options.sync and not call.threaded:\n"),),
        (DURABILITY, f"{STABLE_TESTS}::test_stable_writes_and_commit_sync_on_every_path"),
    ),
    Sabotage(
        "late-answer-lost", "a backend's answer that comes later (a Deferred, a coroutine) is what the procedure gets",
        FRAME,
        (("    return later.addCallbacks(lambda value: _resume(gen, value, None),\n",
          "    return later.addCallbacks(lambda value: _resume(gen, None, None),\n"),),
        ("tests/unit/test_frame.py", "tests/conformance"),
    ),
    Sabotage(
        "portmapper-handler-raises", "no portmapper call crashes its handler (SYSTEM_ERR)",
        "src/nfsstack/portmap/program.py",
        (("        netid = PROT_TO_NETID.get(m.prot)\n        reg = self.registry.lookup(m.prog, m.vers, netid) if",
          "        if m.prog % 7 == 3:\n            raise RuntimeError('sabotage')\n"
          "        netid = PROT_TO_NETID.get(m.prot)\n        reg = self.registry.lookup(m.prog, m.vers, netid) if"),),
        ("tests/unit/test_portmap.py",),
    ),
    Sabotage(
        "mountd-handler-raises", "no MNT call crashes mountd", "src/nfsstack/mount/program.py",
        (("    def _mnt(self, ctx: CallContext, path: str) -> tuple:\n",
          "    def _mnt(self, ctx: CallContext, path: str) -> tuple:\n        raise RuntimeError('sabotage')\n"),),
        ("tests/unit/test_mountd.py",),
    ),
    Sabotage(
        "nfsd-handler-raises", "no ACCESS call crashes nfsd", "src/nfsstack/nfs3/attributes.py",
        (("def access3(call: Call, args):\n",
          "def access3(call: Call, args):\n    raise RuntimeError('sabotage')\n"),),
        (NFS3,),
    ),
    Sabotage(
        "nfsacl-handler-raises", "no GETACL call crashes NFS_ACL", "src/nfsstack/nfsacl/program.py",
        (("        if mask & ~NFS_ACL_MASK:\n            raise NFSError(Stat.INVAL)\n",
          "        if mask & ~NFS_ACL_MASK:\n            raise NFSError(Stat.INVAL)\n"
          "        if mask % 5 == 3:\n            raise RuntimeError('sabotage')\n"),),
        ("tests/unit/test_nfsacl.py::test_fuzz_nfsacl_handlers_with_damaged_calls",),
    ),
    Sabotage(
        "acl-set-as-the-server", "an ACL is set as the caller: only the file's owner may", LOCAL,
        (("        with self.caller.run_as(call.who):  # the kernel lets only the owner (or CAP_FOWNER) set them\n",
          "        with self.caller.run_as(ROOT):\n"),),
        ("tests/unit/test_nfsacl.py",),
    ),
    Sabotage(
        "nfsacl-decoder-unbounded", "an NFS_ACL decoder takes at most NFS_ACL_MAX_ENTRIES entries",
        "src/nfsstack/nfsacl/codec.py",
        (("    if count > NFS_ACL_MAX_ENTRIES:\n        raise XDRError(",
          "    if count > 1 << 32:\n        raise XDRError("),),
        ("tests/unit/test_nfsacl.py",),
    ),
    Sabotage(
        "nlockmgr-handler-raises", "no NLM TEST call crashes nlockmgr", "src/nfsstack/nlm/program.py",
        (("        holder = self.table.test(key, lock, context=args.alock.fh)\n",
          "        holder = self.table.test(key, lock, context=args.alock.fh)\n"
          "        if args.alock.offset % 5 == 1:\n            raise RuntimeError('sabotage')\n"),),
        ("tests/unit/test_nlm.py",),
    ),
    Sabotage(
        "status-handler-raises", "no NSM call crashes status", "src/nfsstack/nsm/program.py",
        (("    def sm_stat(self, ctx: CallContext, name: str) -> tuple[int, int]:\n",
          "    def sm_stat(self, ctx: CallContext, name: str) -> tuple[int, int]:\n"
          "        raise RuntimeError('sabotage')\n"),),
        ("tests/unit/test_nlm.py",),
    ),
    Sabotage(
        "forged-handle-accepted", "a handle whose MAC does not match is NFS3ERR_BADHANDLE",
        "src/nfsstack/exports/handles.py",
        (("        if not hmac.compare_digest(handle[end : end + MAC_SIZE], self._mac(handle[:end])):\n",
          "        if False:\n"),),
        (f"{NFS3}::test_forged_or_truncated_handles_are_badhandle",),
    ),
    Sabotage(
        "root-squash-ignored", "root is squashed to anonuid on a root_squash export",
        "src/nfsstack/exports/identity.py",
        (("    if options.root_squash:\n", "    if False:\n"),),
        (f"{NFS3}::test_root_squash_makes_root_nobody",),
    ),
    Sabotage(
        "ro-ignored", "a ro export refuses every change with NFS3ERR_ROFS", FRAME,
        (("        if write and self.options.read_only:\n", "        if False:\n"),),
        (f"{NFS3}::test_ro_export_refuses_changes_with_rofs",),
    ),
    Sabotage(
        "insecure-port-admitted", "a secure export refuses calls from unprivileged ports",
        "src/nfsstack/exports/policy.py",
        (("        if options.secure and not privileged_port and not header.pseudoflavor:\n", "        if False:\n"),),
        (f"{NFS3}::test_secure_export_refuses_unprivileged_ports", "tests/unit/test_admission.py"),
    ),
    Sabotage(
        "wrong-security-admitted", "nfsd refuses a call whose flavour the export's sec= does not list",
        "src/nfsstack/exports/policy.py",
        (("        if self.check_security and not options.admits(header.security):\n", "        if False:\n"),),
        ("tests/unit/test_principals.py::test_a_call_in_a_flavour_sec_does_not_list_is_refused_with_acces",
         "tests/integration/test_security_flavors.py"),
    ),
    Sabotage(
        "crossing-unchecked", "a LOOKUP crossing into another export is admitted by that export's options and sec=",
        LOCAL,
        (("        if target is not None:\n            call.enter(target)\n",
          "        if target is not None:\n"),),
        ("tests/integration/test_crossmnt.py::"
         "test_a_lookup_crossing_into_an_export_is_refused_where_that_exports_flavours_refuse_the_call",),
    ),
    Sabotage(
        "directory-changes-unsynced", "a directory change answered on a sync export survives a power cut",
        LOCAL,
        (("        if not call.options.sync:\n            return answer\n        if isinstance(answer, defer.Deferred):",
          "        if True:\n            return answer\n        if isinstance(answer, defer.Deferred):"),),
        ("tests/integration/test_durability.py::test_directory_changes_survive_a_power_cut",),
    ),
    Sabotage(
        "directory-sync-shared-early", "a directory sync already running answers no change made after it started",
        "src/nfsstack/nfs3/local/dirsync.py",
        (("            waiting.append(d)\n            return d\n",
          "            return defer.succeed(None)\n"),),
        ("tests/unit/test_dirsync.py",),
    ),
    Sabotage(
        "full-cache-keeps-nothing-new", "a full descriptor cache keeps no object just made and no directory",
        "src/nfsstack/exports/table.py",
        (("            if not fresh or not room:\n", "            if True:\n"),),
        ("tests/unit/test_nfs3.py::test_a_full_descriptor_cache_still_keeps_new_objects_and_directories",),
    ),
    Sabotage(
        "principal-looked-up-on-the-reactor", "a call of a principal not known asks the name service inline",
        "src/nfsstack/exports/identity.py",
        (("        elif self._look_up_in_thread(principal):\n", "        elif False:\n"),),
        ("tests/unit/test_principals.py::test_a_principal_not_known_is_never_looked_up_on_the_reactors_thread_and_waits_are_bounded",),
    ),
    Sabotage(
        "principal-waits-unbounded", "creations and calls wait for a principal's lookup however long it takes",
        "src/nfsstack/exports/identity.py",
        (("        if self._call_later is not None:\n", "        if False:\n"),),
        ("tests/unit/test_principals.py::test_nfsd_answers_jukebox_while_a_principal_is_looked_up_and_waits_for_it_first",),
    ),
    Sabotage(
        "principal-cache-emptied", "a full principal cache keeps the principals of the last minutes",
        "src/nfsstack/exports/identity.py",
        (("                for name in list(users)[: len(users) - self.size // 2]:\n",
          "                for name in list(users):\n"),),
        ("tests/unit/test_principals.py::test_the_cache_is_bounded_and_a_full_one_keeps_the_principals_of_the_last_minutes",),
    ),
    Sabotage(
        "principal-failure-retried-for-ever", "a lookup that fails in its thread gives the anonymous user for a while",
        "src/nfsstack/exports/identity.py",
        (("            self._keep(principal, (UNKNOWN, started + self.lifetime))\n", "            pass\n"),),
        ("tests/unit/test_principals.py::test_a_lookup_that_fails_in_its_thread_gives_the_anonymous_user_for_its_lifetime_not_jukebox_for_ever",),
    ),
    Sabotage(
        "udp-too-large-reply-unverified", "a UDP reply too large to send is SYSTEM_ERR with the call's verifier",
        "src/nfsstack/rpc/server.py",
        (("    return reply[:end] + U32.pack(AcceptStat.SYSTEM_ERR)\n",
          "    return accepted_reply(xid, AcceptStat.SYSTEM_ERR)\n"),),
        ("tests/unit/test_gss.py::test_a_reply_too_large_for_udp_is_system_err_with_the_verifier_the_client_checks",),
    ),
    Sabotage(
        "setattr-without-sync", "SETATTR on a sync export answers once the attributes are on stable storage", LOCAL,
        (("        if not call.options.sync or not _sets_something(attrs, before):\n",
          "        if True:\n"),),
        ("tests/integration/test_durability.py::test_attributes_set_survive_a_power_cut",),
    ),
    Sabotage(
        "setattr-of-nothing-syncs", "a SETATTR that sets nothing syncs nothing (a client looping on it)", LOCAL,
        (("        if not call.options.sync or not _sets_something(attrs, before):\n",
          "        if not call.options.sync:\n"),),
        (f"{NFS3}::test_setattr_syncs_the_object_changed_and_nothing_when_it_sets_nothing",),
    ),
    Sabotage(
        "created-file-not-synced", "a CREATE that changes the file after making it syncs the file, not only the "
        "directory", LOCAL,
        (("        if not (altered and call.options.sync):\n", "        if True:\n"),),
        ("tests/integration/test_durability.py::test_creates_that_change_the_file_survive_a_power_cut",
         f"{NFS3}::test_creates_sync_what_they_change_after_making_it"),
    ),
    Sabotage(
        "ring-create-of-existing-unsynced", "an UNCHECKED CREATE that truncates an existing file after the ring's "
        "open found it syncs the file", "src/nfsstack/nfs3/local/as_caller.py",
        (("                    return self._create_existing(who, dirfd, name, attrs, guarded, read_only, keep, written)\n",
          "                    self._create_existing(who, dirfd, name, attrs, guarded, read_only, keep, written)\n"),),
        (f"{NFS3}::test_creates_sync_what_they_change_after_making_it",),
    ),
    Sabotage(
        "create-answered-before-its-file-sync", "a CREATE that syncs its file and its directory answers once both "
        "have ended, a failure or not", LOCAL,
        (("        return defer.DeferredList(syncs, consumeErrors=True).addCallback(_both_ended, made)\n",
          "        return defer.gatherResults(syncs, consumeErrors=True).addCallbacks(\n"
          "            lambda _: made, lambda failure: failure.value.subFailure)\n"),),
        (f"{NFS3}::test_a_create_is_answered_once_both_its_syncs_have_ended",),
    ),
    Sabotage(
        "truncation-synced-by-reopening", "a truncating SETATTR syncs through the descriptor it truncated with",
        LOCAL,
        (("        return self._object_stable(call, None, fd, before, written)\n",
          "        return self._object_stable(call, None, fd, before)\n"),),
        (f"{NFS3}::test_truncating_setattr_syncs_through_the_descriptor_it_wrote",),
    ),
    Sabotage(
        "host-synced-for-a-symlink", "a SETATTR of a symlink syncs its filesystem, not every filesystem of the host",
        LOCAL,
        (("        return self.directories.filesystem(st.st_dev).addCallback(lambda _: answer)\n",
          "        return self.directories.everything().addCallback(lambda _: answer)\n"),),
        (f"{NFS3}::test_setattr_syncs_the_object_changed_and_nothing_when_it_sets_nothing",),
    ),
    Sabotage(
        "syncfs-through-an-old-descriptor", "a filesystem's syncfs goes through a new open of its export's root, "
        "not a copy of the root's descriptor (which would report write errors older than the change)",
        "src/nfsstack/exports/table.py",
        (('                        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)\n',
          "                        return os.dup(fd)\n"),),
        ("tests/unit/test_dirsync.py::test_the_table_reopens_an_export_root_for_syncfs_and_knows_no_other_filesystem",),
    ),
    Sabotage(
        "thread-groups-assumed", "a caller with no groups acts with none, whatever groups the server started with",
        "src/nfsstack/exports/identity.py",
        (("        self._state.groups = None\n", "        self._state.groups = ()\n"),
         ("            current = state.who = ROOT\n            state.groups = None\n",
          "            current = state.who = ROOT\n            state.groups = ()\n")),
        ("tests/integration/test_privileges.py::test_a_server_started_with_supplementary_groups_lends_them_to_no_caller",
         "tests/unit/test_paths.py::test_groups_a_thread_started_with_are_not_lent_to_a_caller_without_any",
         "tests/unit/test_paths.py::test_a_pool_threads_groups_are_set_on_its_first_switch"),
    ),
    Sabotage(
        "thread-groups-assumed-in-pool", "a pool thread's first switch sets its groups, whatever it started with",
        "src/nfsstack/exports/identity.py",
        (("            current = state.who = ROOT\n            state.groups = None\n",
          "            current = state.who = ROOT\n            state.groups = ()\n"),),
        ("tests/unit/test_paths.py::test_a_pool_threads_groups_are_set_on_its_first_switch",),
    ),
    Sabotage(
        "crossing-up-unchecked", "LOOKUP of .. at a crossed root is admitted by the export above as its handle would be",
        LOCAL,
        (("                call.held.append(upfd)\n                call.enter(target)\n",
          "                call.held.append(upfd)\n"),),
        ("tests/integration/test_crossmnt.py::"
         "test_a_lookup_crossing_into_an_export_is_refused_where_that_exports_flavours_refuse_the_call",),
    ),
    Sabotage(
        "access-without-faccessat2-as-root", "without faccessat2, ACCESS still gives a user its own rights, not root's",
        "src/nfsstack/nfs3/local/as_caller.py",
        (("        acl = get_acl(path, ACCESS_XATTR)\n",
          "        return (os.access(path, os.R_OK, effective_ids=True), not read_only and os.access(path, os.W_OK),\n"
          "                os.access(path, os.X_OK, effective_ids=True))\n"),),
        ("tests/unit/test_kernel_access.py",),
    ),
    Sabotage(
        "principal-lookup-from-a-pool-thread", "principal lookups in threads start from the reactor's thread only",
        "src/nfsstack/exports/identity.py",
        (("        if self.in_thread is None or threading.get_ident() != self._home:\n",
          "        if self.in_thread is None:\n"),),
        ("tests/unit/test_principals.py",),
    ),
    Sabotage(
        "machine-principal-unsquashed", "root_squash squashes a Kerberos machine principal",
        "src/nfsstack/exports/identity.py",
        (("        who = _squashed(user.uid, user.gid, user.gids, options)\n",
          "        who = user\n"),),
        ("tests/unit/test_principals.py",),
    ),
    Sabotage(
        "drc-disabled", "a retransmitted non-idempotent call gets its first reply again",
        "src/nfsstack/rpc/server.py",
        (("            cached = self.reply_cache.begin(key)\n", "            cached = None\n"),),
        ("tests/unit/test_rpc_dispatch.py::test_duplicate_request_cache_replays_non_idempotent_calls",
         f"{NFS3}::test_retransmitted_remove_gets_the_first_reply"),
    ),
    Sabotage(
        "conflicting-lock-granted", "a lock conflicting with a granted one is denied or waits",
        "src/nfsstack/nlm/locks.py",
        (("            if held.conflicts(lock):\n                return held\n",
          "            if False:\n                return held\n"),),
        ("tests/unit/test_locks.py",),
    ),
    Sabotage(
        "registration-left-at-stop", "a stopped service unregisters from the portmapper",
        "src/nfsstack/rpc/service.py",
        (("            for prog, vers, netid in self._registered:\n", "            for prog, vers, netid in ():\n"),),
        ("tests/integration/test_twisted_client.py::test_register_with_a_portmapper_over_tcp_then_unregister",
         "tests/integration/test_rpcinfo.py::test_registered_service_is_shown_and_removed_on_stop"),
    ),
    Sabotage(
        "keepalive-mac-ignored", "a keepalive without the right MAC is refused", "src/nfsstack/cluster/keepalive.py",
        (("        if not hmac.compare_digest(mac, _mac(key, bytes(data[:end]))):\n", "        if False:\n"),),
        ("tests/unit/test_cluster.py",),
    ),
    Sabotage(
        "identity-switch-unchecked", "a filesystem identity switch that did not take effect fails the call",
        "src/nfsstack/exports/identity.py",
        (("            if syscall(self._setfsgid, -1) != who.gid:", "            if False:"),
         ("            if syscall(self._setfsuid, -1) != who.uid:", "            if False:"),
         ("            if syscall(self._setgroups, len(who.gids), array) != 0:",
          "            if syscall(self._setgroups, len(who.gids), array) != 0 and False:")),
        ("tests/integration/test_privileges.py::test_a_switch_that_did_not_happen_fails_the_call",),
    ),
    Sabotage(
        "serves-without-identity-switch", "a process that cannot act as its clients does not serve files",
        "src/nfsstack/tap.py",
        (("    elif (cannot_switch := can_switch()) is not None:\n", "    elif (cannot_switch := None) is not None:\n"),),
        ("tests/integration/test_privileges.py::test_plain_user_with_read_search_never_serves_as_itself",),
    ),
    Sabotage(
        "start-failure-kept-running", "a service that cannot start stops the process, unless --partial",
        "src/nfsstack/startup.py",
        (("            if partial and all(name in SERVICES for name in names):\n",
          "            if all(name in SERVICES for name in names):\n"),),
        ("tests/integration/test_health.py::test_a_port_in_use_stops_the_start_or_with_partial_is_reported",
         "tests/unit/test_lifecycle.py"),
    ),
    Sabotage(
        "partial-stack-healthy", "/healthz names every configured service that is not serving",
        "src/nfsstack/startup.py",
        (("            out.update((name, False) for name in child.names)\n", "            pass\n"),),
        ("tests/integration/test_health.py::test_a_partial_stack_started_on_purpose_says_what_is_not_serving",),
    ),
    Sabotage(
        "default-export-to-everyone", "without --exports, ./export is for this machine only", "src/nfsstack/service.py",
        (('DEFAULT_CLIENTS = ("127.0.0.0/8", "::1")\n', 'DEFAULT_CLIENTS = ("*",)\n'),),
        ("tests/integration/test_startup.py::test_the_default_export_admits_this_machine_only",),
    ),
    Sabotage(
        "default-export-symlink-followed", "a ./export that is a symlink is refused, never exported",
        "src/nfsstack/service.py",
        (("    if stat.S_ISLNK(st.st_mode):\n", "    if False:\n"),),
        ("tests/integration/test_startup.py::test_a_default_export_that_is_not_our_own_directory_is_refused",),
    ),
    Sabotage(
        "handle-key-left-readable", "a handle key or state directory others can read is made private",
        "src/nfsstack/statefile.py",
        (("    if st.st_mode & 0o077 == 0:\n", "    if True:\n"),),
        ("tests/unit/test_state_files.py",
         "tests/integration/test_startup.py::test_state_files_open_to_others_are_made_private_and_the_mount_list_follows_the_exports"),
    ),
    Sabotage(
        "options-after-a-space-silent", "options after a space (given to everyone) are warned about, as by exportfs",
        "src/nfsstack/exports/file.py",
        (("            if not host:\n", "            if False:\n"),),
        ("tests/unit/test_exports.py",),
    ),
    Sabotage(
        "refusals-not-rate-limited", "a refused client is logged once a minute, not on every call",
        "src/nfsstack/refusals.py",
        (("        if entry is not None and now - entry[0] < self.interval:\n", "        if False:\n"),),
        ("tests/unit/test_refusals.py",),
    ),
    Sabotage(
        "outside-the-export-served", "no handle resolves to an object outside its export",
        "src/nfsstack/exports/table.py",
        (('        return not stat.S_ISDIR(st.st_mode) and (where == "/" or st.st_nlink > 1) and not self._subtree_check(export)\n', "        return True\n"),),
        (f"{NFS3}::test_a_validly_signed_handle_outside_its_export_is_stale", "tests/integration/test_crossmnt.py"),
    ),
    Sabotage(
        "forgotten-file-stale", "a file whose place the kernel forgot (after a reboot) is still served by its handle",
        "src/nfsstack/exports/table.py",
        (('        return not stat.S_ISDIR(st.st_mode) and (where == "/" or st.st_nlink > 1) and not self._subtree_check(export)\n',
          "        return not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and not self._subtree_check(export)\n"),),
        (f"{NFS3}::test_a_file_whose_place_the_kernel_forgot_is_served",),
    ),
    Sabotage(
        "linked-file-stale", "a file linked from outside its export is still served by its handle",
        "src/nfsstack/exports/table.py",
        (('        return not stat.S_ISDIR(st.st_mode) and (where == "/" or st.st_nlink > 1) and not self._subtree_check(export)\n',
          '        return not stat.S_ISDIR(st.st_mode) and where == "/" and not self._subtree_check(export)\n'),),
        (f"{NFS3}::test_a_file_linked_from_outside_its_export_is_served",),
    ),
    Sabotage(
        "chown-h-through-procfs", "SETATTR of a symlink's owner changes the symlink", "src/nfsstack/nfs3/local/as_caller.py",
        (("                if _fchownat(fd, b\"\", -1 if attrs.uid is None else attrs.uid,\n"
          "                             -1 if attrs.gid is None else attrs.gid, _AT_EMPTY_PATH) != 0:\n",
          "                if os.chown(path, -1 if attrs.uid is None else attrs.uid,\n"
          "                            -1 if attrs.gid is None else attrs.gid, follow_symlinks=not is_link):\n"),),
        (f"{NFS3}::test_setattr_of_a_symlink_changes_the_link_not_its_target",),
    ),
    Sabotage(
        "krb5p-reply-in-clear", "a krb5p reply is encrypted: a capture of a kernel client's session holds none of "
        "the file's bytes", "src/nfsstack/rpc/gss_server.py",
        (("                wrapped = encode_priv_data(gss.wrap(body, True).message)\n",
          "                wrapped = encode_priv_data(gss.wrap(body, False).message)\n"),),
        ("tests/integration/kernel/test_kernel.py::test_nfsstack_kerberos",),
    ),
    Sabotage(
        "drc-blind-to-the-caller", "a retransmission is answered from the reply cache only for the user and flavour "
        "that made the call", "src/nfsstack/rpc/server.py",
        (("                              caller(header))\n", "                              None)\n"),),
        ("tests/unit/test_rpc_dispatch.py::test_the_reply_cache_answers_a_retransmission_only_to_the_same_caller",),
    ),
    Sabotage(
        "overlay-without-identities", "the map of places keys overlayfs objects by the identities it gives",
        "src/nfsstack/exports/handles.py",
        (("        found = kernel_handle(dirfd, name, follow, fid=True)\n", "        found = kernel_handle(dirfd, name, follow)\n"),),
        ("tests/unit/test_paths.py::test_overlay_files_are_served_by_paths_and_refused_by_kernel_handles",),
    ),
    Sabotage(
        "backend-probed-in-the-working-directory", "the backend is chosen by probing the exports' filesystems",
        "src/nfsstack/tap.py",
        (("    candidates = probed or ([os.getcwd()] if default else [])\n",
          "    candidates = [os.getcwd()]\n"),),
        ("tests/integration/test_unprivileged.py::test_root_serves_a_containers_own_overlay_files_by_paths",),
    ),
    Sabotage(
        "unservable-export-mounted", "MNT of an export without file handles is refused, saying why",
        "src/nfsstack/nfs3/local/filesystem.py",
        (("                if e.errno == errno.EOPNOTSUPP:\n                    # Added by a reload",
          "                if False:\n                    # Added by a reload"),),
        ("tests/unit/test_paths.py::test_overlay_files_are_served_by_paths_and_refused_by_kernel_handles",),
    ),
    Sabotage(
        "subtree-check-ignored", "under subtree_check a file whose place the kernel does not settle is stale",
        "src/nfsstack/exports/table.py",
        (("        return any(options.subtree_check for _, options in export.clients)\n", "        return False\n"),),
        (f"{NFS3}::test_subtree_check_makes_a_file_whose_place_is_not_known_stale",),
    ),
    Sabotage(
        "one-overlay-export-takes-all", "an export without file handles beside others leaves them kernel handles",
        "src/nfsstack/tap.py",
        (("    if candidates and not with_handles:\n", "    if without:\n"),),
        ("tests/integration/test_unprivileged.py::test_an_overlay_export_beside_others_is_refused_saying_why",),
    ),
    Sabotage(
        "generic-identities-taken", "a filesystem's generic identities (an inode number that comes back) are refused",
        "src/nfsstack/exports/handles.py",
        (("    if found[0] == FILEID_INO64_GEN:\n", "    if False:\n"),),
        ("tests/unit/test_paths.py::test_a_filesystem_without_export_operations_gives_no_identity_to_serve_by",),
    ),
    Sabotage(
        "nothing-servable-started", "exports that no backend can serve stop the start, saying why",
        "src/nfsstack/tap.py",
        (("        servable = not every_export or any(", "        servable = True or any("),),
        ("tests/integration/test_unprivileged.py::test_exports_that_nothing_can_serve_stop_the_start_saying_why",),
    ),
    Sabotage(
        "mountpoint-probed-below", "a mountpoint export whose disk is not mounted is not judged by the directory below",
        "src/nfsstack/tap.py",
        (("    waiting = {id(export) for export in exports if _waits_for_its_mount(export)}\n", "    waiting = set()\n"),),
        ("tests/integration/test_unprivileged.py::test_a_mountpoint_export_is_not_judged_by_the_directory_below_its_disk",),
    ),
    Sabotage(
        "local-realms-not-in-workers", "nfsd's workers accept the realms --local-realms names",
        "src/nfsstack/worker.py",
        (("    top = NfsStackService(local_realms(config.get(\"local-realms\")))", "    top = NfsStackService()"),),
        ("tests/integration/test_kerberos.py::test_local_realms_make_a_realms_users_local_users_in_the_workers",),
    ),
    Sabotage(
        "auth-sys-below-a-kerberos-root", "AUTH_SYS is answered on a Kerberos export's root alone (RFC 2623 2.3.2)",
        "src/nfsstack/nfs3/frame.py",
        (("                if lenient is not None and self._is_root(export, root):\n",
          "                if lenient is not None:\n"),),
        ("tests/integration/test_security_flavors.py::test_auth_sys_may_ask_getattr_and_fsinfo_of_a_kerberos_exports_root_only",),
    ),
    Sabotage(
        "mnt-symlinks-unresolved", "MNT matches exports with symlinks resolved, as rpc.mountd",
        "src/nfsstack/exports/table.py",
        (("        real = os.path.realpath(path)\n        literal =", "        real = written\n        literal ="),),
        ("tests/unit/test_mountd.py::test_mnt_resolves_symlinks_on_both_sides_as_rpc_mountd",),
    ),
)


def _copy(into: Path) -> None:
    """The files a test run needs; the guest image cache is shared, not copied (it is read only)."""
    for name in ("src", "tests", "twisted", "etc", "bench"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, into / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, into / name)
    if (REPO / ".cache").exists():
        (into / ".cache").symlink_to(REPO / ".cache")


def _apply(sabotage: Sabotage, root: Path) -> None:
    path = root / sabotage.path
    text = path.read_text()
    for old, new in sabotage.edits:
        n = text.count(old)
        if n != 1:
            raise LookupError(f"{sabotage.name}: {sabotage.path} has {n} copies of {old.strip()[:60]!r}")
        text = text.replace(old, new)
    path.write_text(text)


def run(sabotage: Sabotage, keep: bool = False) -> tuple[bool, str, float]:
    """(caught, by which test or why not, seconds)."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix=f"nfsstack-sabotage-{sabotage.name}-"))
    os.chmod(root, 0o755)  # servers that switch to a client's uid still walk through it
    try:
        _copy(root)
        _apply(sabotage, root)
        tests = [t for t in sabotage.tests if (root / t.split("::")[0]).exists()]
        if not tests:
            return False, "none of its tests exist", time.monotonic() - started
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rf", *tests],
                             cwd=root, env=env, capture_output=True, text=True, timeout=900)
        failed = [line[len("FAILED "):].split(" - ")[0] for line in out.stdout.splitlines() if line.startswith("FAILED ")]
        if out.returncode == 1 and failed:
            return True, failed[0], time.monotonic() - started
        tail = " | ".join(out.stdout.strip().splitlines()[-3:])
        return False, f"pytest exit {out.returncode}: {tail}", time.monotonic() - started
    finally:
        if keep:
            print(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="sabotages to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the sabotages and exit")
    parser.add_argument("--keep", action="store_true", help="keep each sabotaged copy")
    args = parser.parse_args(argv)
    known = {s.name: s for s in SABOTAGES}
    if args.list:
        for s in SABOTAGES:
            print(f"{s.name:32} {s.promise}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"no sabotage named {', '.join(unknown)}")
    chosen = [known[n] for n in args.names] or list(SABOTAGES)
    survived = []
    for s in chosen:
        try:
            caught, why, seconds = run(s, args.keep)
        except LookupError as e:
            caught, why, seconds = False, f"no longer applies: {e}", 0.0
        print(f"{'caught  ' if caught else 'SURVIVED'} {s.name:32} {seconds:6.1f} s  {why}", flush=True)
        if not caught:
            survived.append(s.name)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} sabotages caught"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
