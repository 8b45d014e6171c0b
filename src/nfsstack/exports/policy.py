"""Who may use an export: the one admission policy of mountd, nfsd and nlockmgr.

A call on an export is admitted as rpc.mountd and knfsd admit it:

* a client specification of the export must match the client (exports(5),
  "Machine Name Formats": the most specific kind wins), else the client is
  refused (:data:`NOT_ADMITTED`);
* a ``secure`` export (the default) takes calls only from a privileged port,
  below 1024 (:data:`INSECURE_PORT`; knfsd logs "request from insecure
  port");
* an admitted call runs as the AUTH_SYS credential squashed by the client's
  options (``root_squash``, ``all_squash``, ``anonuid``/``anongid``):
  :func:`~nfsstack.exports.identity.effective`.

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

from nfsstack.exports.file import Export, ExportOptions
from nfsstack.exports.identity import Identity, effective
from nfsstack.exports.table import ExportTable
from nfsstack.rpc.message import Credential


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

Verdict = Union[Admitted, Refused]

#: A verdict decided while no export had a wildcard specification: it holds whatever the client's name.
_ANY_NAME = object()


class Admission:
    """Admits clients to the exports of a :class:`~nfsstack.exports.table.ExportTable`."""

    def __init__(self, table: ExportTable, size: int = 4096) -> None:
        self.table = table
        self.size = size
        #: (id(export), address, privileged port?, id(credential)) -> (export, credential, verdict, the client's
        #: name it was decided with, or _ANY_NAME).  An Export is immutable (a reload makes new ones), so a
        #: verdict changes only with the client's name, and only while some export has a wildcard specification.
        #: By identity, not by value: a client's credential is the same object call after call (decoded once),
        #: and hashing dataclasses by value costs more than deciding again; the entry keeps both objects alive,
        #: so their ids are not reused meanwhile.
        self._verdicts: dict[tuple[int, str, bool, int], tuple[Export, Optional[Credential], Verdict, object]] = {}

    def lookup(self, address: str) -> Optional[defer.Deferred]:
        """None if :meth:`admit` can decide for ``address`` now; else the Deferred of the reverse lookup a
        wildcard client specification needs, which fires (with the name, or None) once it is done."""
        table = self.table
        if table.needs_names and not table.names.known(address):
            return table.names.resolve(address)
        return None

    def admit(self, export: Export, address: str, privileged_port: bool,
              credential: Optional[Credential]) -> Verdict:
        """Whether the client at ``address`` may use ``export``, and how (see the module's docstring).

        A wildcard specification matches only a name already looked up (:meth:`lookup` first).
        """
        key = (id(export), address, privileged_port, id(credential))
        entry = self._verdicts.get(key)
        if entry is not None and entry[0] is export and entry[1] is credential and (
                entry[3] is _ANY_NAME or entry[3] == self.table.names.cached(address)):
            return entry[2]
        # The name first: if a lookup ends meanwhile, the verdict is kept with the older name, and decided again.
        name = self.table.names.cached(address) if self.table.needs_names else _ANY_NAME
        verdict = self._decide(export, address, privileged_port, credential)
        if len(self._verdicts) >= self.size:
            self._verdicts.clear()
        self._verdicts[key] = (export, credential, verdict, name)
        return verdict

    def _decide(self, export: Export, address: str, privileged_port: bool,
                credential: Optional[Credential]) -> Verdict:
        options = self.table.options_for(export, address)
        if options is None:
            return NOT_ADMITTED
        if options.secure and not privileged_port:
            return INSECURE_PORT
        return Admitted(options, effective(credential, options))


class MountRefused(Exception):
    """A storage backend refuses to mount a path of an export it serves (RFC 1813 section 5.2.1): why, as
    mountd logs it, and whether mountd answers MNT3ERR_NOENT (``noent``: as if the path were not there) or
    MNT3ERR_ACCES."""

    def __init__(self, reason: str, noent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.noent = noent
