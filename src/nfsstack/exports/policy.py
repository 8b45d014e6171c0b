"""Who may use an export: the one admission policy of mountd, nfsd and nlockmgr.

A call on an export is admitted as rpc.mountd and knfsd admit it:

* a client specification of the export must match the client (exports(5),
  "Machine Name Formats": the most specific kind wins), else the client is
  refused (:data:`NOT_ADMITTED`);
* a ``secure`` export (the default) takes calls only from a privileged port,
  below 1024 (:data:`INSECURE_PORT`; knfsd logs "request from insecure
  port"), except RPCSEC_GSS calls, which prove who they are otherwise
  (knfsd's ``nfsd_originating_port_ok``);
* nfsd (and NFS_ACL beside it) takes a call only in a security flavour the
  client's ``sec=`` lists (:func:`wrong_security`), as knfsd's
  ``check_nfsd_access`` does at every file handle: its ``nfserr_wrongsec``
  reaches an NFSv3 client as NFS3ERR_ACCES (``nfsd3_map_status``; before it,
  ``map_new_errors``).  mountd does not check: MNT answers the export's
  flavours and the client chooses (rpc.mountd, RFC 2623 section 2.3.2); nor
  does nlockmgr, whose calls the Linux client makes with AUTH_SYS whatever
  the mount's flavour (knfsd skips the check for ``NFSD_MAY_LOCK``).  Those
  two make their :class:`Admission` with ``check_security=False``;
* an admitted call runs as its AUTH_SYS credential, or the local user of
  its Kerberos principal, squashed by the client's options
  (``root_squash``, ``all_squash``, ``anonuid``/``anongid``):
  :func:`~nfsstack.exports.identity.caller_identity`.

A wildcard specification (``*.example.org``) matches the client's name, so its
address is looked up first: :meth:`Admission.lookup` gives the Deferred of that
lookup when one is needed, and None when :meth:`Admission.admit` can decide at
once.  nfsd asks on every call, so the common case (no wildcard, or the name
already known) costs no Deferred, and an admitted client's verdict is the same
object call after call.

What a refusal is answered with is each program's own (mountd: MNT3ERR_ACCES
as rpc.mountd; nfsd: the nfsstat3 :attr:`Refused.status` names; nlockmgr:
``NLM4_FAILED``), and so is whether and how it is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from twisted.internet import defer

from nfsstack.exports.file import AUTH_NONE, AUTH_SYS, SECURITY_NAMES, Export, ExportOptions
from nfsstack.exports.identity import PRINCIPALS, Identity, Principals, effective
from nfsstack.exports.table import ExportTable
from nfsstack.rpc.message import CallHeader


@dataclass(frozen=True, slots=True)
class Admitted:
    """The client may use the export: with these options, as this identity."""

    options: ExportOptions
    identity: Identity


@dataclass(frozen=True, slots=True)
class Refused:
    """The client may not use the export: why (as logged), and the nfsstat3 name nfsd answers (RFC 1813 2.6)."""

    reason: str
    status: str


#: No client specification of the export matches the client.
NOT_ADMITTED = Refused("no export entry admits this client", "ACCES")
#: A ``secure`` export, and the call came from a port above 1023.
INSECURE_PORT = Refused("call from an unprivileged port to a secure export", "PERM")

#: A call in a security flavour the client's ``sec=`` does not list, by the flavour: knfsd's
#: ``nfserr_wrongsec``, which an NFSv3 client gets as NFS3ERR_ACCES (see the module's docstring).
_WRONG_SECURITY: dict[int, Refused] = {}


def wrong_security(flavor: int) -> Refused:
    """The refusal of a call made in ``flavor`` (CallHeader.security) on an export whose ``sec=`` lacks it."""
    refused = _WRONG_SECURITY.get(flavor)
    if refused is None:
        name = SECURITY_NAMES.get(flavor, f"flavour {flavor}")
        named = "AUTH_SYS" if flavor == AUTH_SYS else ("AUTH_NONE" if name == "none" else name)
        refused = _WRONG_SECURITY[flavor] = Refused(f"a call with {named}, which the export's sec= does not list",
                                                    "ACCES")
    return refused


Verdict = Union[Admitted, Refused]

#: A verdict decided while no export had a wildcard specification: it holds whatever the client's name.
_ANY_NAME = object()


class Admission:
    """Admits clients to the exports of a :class:`~nfsstack.exports.table.ExportTable`."""

    def __init__(self, table: ExportTable, size: int = 4096, check_security: bool = True,
                 principals: Principals = PRINCIPALS) -> None:
        self.table = table
        self.size = size
        #: Refuse a call whose flavour the client's ``sec=`` does not list (nfsd); mountd and nlockmgr do not.
        self.check_security = check_security
        #: Kerberos principals -> local users, for RPCSEC_GSS calls.
        self.principals = principals
        #: AUTH_SYS and AUTH_NONE calls: (id(export), address, privileged port?, id(credential)) -> (export,
        #: credential, verdict, the client's name it was decided with, or _ANY_NAME).  An Export is immutable
        #: (a reload makes new ones), so a verdict changes only with the client's name, and only while some
        #: export has a wildcard specification.  By identity, not by value: a client's credential is the same
        #: object call after call (decoded once), and hashing dataclasses by value costs more than deciding
        #: again; the entry keeps both objects alive, so their ids are not reused meanwhile.
        #: RPCSEC_GSS calls: (id(export), address, privileged port?, principal, pseudoflavour) -> (export,
        #: principal, verdict, name, when the principal's user must be looked up again): a verdict holds no
        #: longer than the name service's answer (:class:`~nfsstack.exports.identity.Principals`).
        self._verdicts: dict[tuple, tuple] = {}

    def lookup(self, address: str, header: Optional[CallHeader] = None) -> Optional[defer.Deferred]:
        """None if :meth:`admit` can decide for ``address`` (and the call of ``header``) now; else a Deferred
        to wait for first, which fires once what it needs is known: the reverse lookup a wildcard client
        specification needs (it fires with the name, or None), or the local user of an RPCSEC_GSS call's
        principal, looked up in a thread (:meth:`~nfsstack.exports.identity.Principals.pending`: bounded in
        time, after which the call gets NFS3ERR_JUKEBOX rather than wait on)."""
        table = self.table
        if table.needs_names and not table.names.known(address):
            return table.names.resolve(address)
        if header is not None and header.pseudoflavor:
            return self.principals.pending(header.principal)
        return None

    def admit(self, export: Export, address: str, privileged_port: bool, header: CallHeader) -> Verdict:
        """Whether the client at ``address`` may use ``export`` with the call of ``header``, and how (see the
        module's docstring).

        A wildcard specification matches only a name already looked up (:meth:`lookup` first).
        """
        if header.pseudoflavor:
            return self._admit_principal(export, address, privileged_port, header)
        credential = header.credential
        key = (id(export), address, privileged_port, id(credential))
        entry = self._verdicts.get(key)
        if entry is not None and entry[0] is export and entry[1] is credential and (
                entry[3] is _ANY_NAME or entry[3] == self.table.names.cached(address)):
            return entry[2]
        # The name first: if a lookup ends meanwhile, the verdict is kept with the older name, and decided again.
        name = self.table.names.cached(address) if self.table.needs_names else _ANY_NAME
        options = self._options(export, address, privileged_port, header)
        verdict = options if options.__class__ is Refused else Admitted(options, effective(credential, options))
        if len(self._verdicts) >= self.size:
            self._verdicts.clear()
        self._verdicts[key] = (export, credential, verdict, name)
        return verdict

    def admit_on_root(self, refused: Refused, export: Export, address: str,
                      header: CallHeader) -> Optional[Admitted]:
        """What a GETATTR or FSINFO of ``export``'s root that :meth:`admit` ``refused`` gets instead, or None: an
        AUTH_SYS or AUTH_NONE call refused for its flavour alone is admitted if the client's ``sec=`` lists a
        Kerberos flavour (RFC 2623 section 2.3.2: a client may use AUTH_SYS while it mounts; knfsd's
        ``NFSD_MAY_BYPASS_GSS_ON_ROOT``).  The Linux client asks so when its FSINFO of the root in the mount's
        flavour fails (``nfs3_proc_fsinfo`` and ``nfs3_proc_get_root`` ask again with AUTH_SYS; seen with Linux
        6.1 as root without Kerberos credentials, whose mount then fails on its next call, PATHCONF in its own
        flavour, with knfsd too).  The call acts as its credential, squashed.  Whether the handle is the root is
        the caller's to know (:meth:`~nfsstack.nfs3.frame.Call.enter`)."""
        if header.pseudoflavor or refused is not wrong_security(header.security):
            return None
        options = self.table.options_for(export, address)
        if options is None or all(flavor in (AUTH_NONE, AUTH_SYS) for flavor in options.security):
            return None
        return Admitted(options, effective(header.credential, options))

    def _admit_principal(self, export: Export, address: str, privileged_port: bool,
                         header: CallHeader) -> Verdict:
        """:meth:`admit` for an RPCSEC_GSS call: its identity is its principal's local user, looked up in the
        name service, so its verdict is kept only as long as that answer is."""
        principal = header.principal
        key = (id(export), address, privileged_port, principal, header.pseudoflavor)
        entry = self._verdicts.get(key)
        if entry is not None and entry[0] is export and (
                entry[3] is _ANY_NAME or entry[3] == self.table.names.cached(address)) and (
                self.principals.clock() < entry[4]):
            return entry[2]
        name = self.table.names.cached(address) if self.table.needs_names else _ANY_NAME
        options = self._options(export, address, privileged_port, header)
        if options.__class__ is Refused:
            verdict, expires = options, self.principals.clock() + self.principals.lifetime
        else:
            identity, expires = self.principals.effective(principal, options)
            verdict = Admitted(options, identity)
        if len(self._verdicts) >= self.size:
            self._verdicts.clear()
        self._verdicts[key] = (export, principal, verdict, name, expires)
        return verdict

    def _options(self, export: Export, address: str, privileged_port: bool,
                 header: CallHeader) -> Union[ExportOptions, Refused]:
        """The client's options for ``export``, or why the call is refused before its identity matters."""
        options = self.table.options_for(export, address)
        if options is None:
            return NOT_ADMITTED
        if options.secure and not privileged_port and not header.pseudoflavor:
            return INSECURE_PORT
        if self.check_security and not options.admits(header.security):
            return wrong_security(header.security)
        return options


class MountRefused(Exception):
    """A storage backend refuses to mount a path of an export it serves (RFC 1813 section 5.2.1): why, as
    mountd logs it, and whether mountd answers MNT3ERR_NOENT (``noent``: as if the path were not there) or
    MNT3ERR_ACCES."""

    def __init__(self, reason: str, noent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.noent = noent
