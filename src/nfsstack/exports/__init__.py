"""The exports: the exports(5) file, the exports in force with their handles, and who may use them.

Below the programs and above :mod:`nfsstack.rpc` (docs/architecture.md, "Layers"): mountd, nfsd and
nlockmgr import this package; nothing in it imports a program.

* :mod:`~nfsstack.exports.file`: the exports(5) parser (:class:`Export`, :class:`ExportOptions`,
  :class:`Exports`, :func:`parse_exports`, :func:`load_exports`), re-exported here;
* :mod:`~nfsstack.exports.table`: :class:`~nfsstack.exports.table.ExportTable`, the exports in force, their
  roots, handles and crossed filesystems (with :mod:`~nfsstack.exports.mounts`);
* :mod:`~nfsstack.exports.handles`: handles that survive restarts (kernel handles and a MAC);
* :mod:`~nfsstack.exports.names`: reverse lookups for wildcard client specifications;
* :mod:`~nfsstack.exports.identity`: squashing a credential into an identity, and switching a thread to it;
* :mod:`~nfsstack.exports.policy`: :class:`~nfsstack.exports.policy.Admission`, the one admission policy.
"""

from nfsstack.exports.file import (
    ANON_ID,
    Export,
    ExportOptions,
    Exports,
    ExportsError,
    load_exports,
    parse_exports,
)

__all__ = ["ANON_ID", "Export", "ExportOptions", "Exports", "ExportsError", "load_exports", "parse_exports"]
