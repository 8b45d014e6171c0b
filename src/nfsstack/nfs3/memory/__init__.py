"""The memory backend: a POSIX-like tree in memory for each export (``--backend memory``).

Files, directories, symbolic links, hard links, devices, FIFOs and sockets, with modes, owners and times, checked
as Linux checks a local process (:mod:`~nfsstack.nfs3.memory.permissions`); READDIR cookies that stay valid while
names come and go (:mod:`~nfsstack.nfs3.memory.listing`); handles that name an object by fileid and generation,
MAC'd, so a removed object's handle is NFS3ERR_STALE even once its fileid is used again; and a limit on the bytes
it all takes, beyond which a change answers NFS3ERR_NOSPC and changes nothing (:mod:`~nfsstack.nfs3.memory.inodes`).
Everything answers at once on the reactor (``blocking`` is False).  Nothing survives the process.

It is the simplest complete backend, and the conformance suite's reference beside the local one
(docs/architecture.md, "Adding a backend").
"""

from nfsstack.nfs3.memory.filesystem import DEFAULT_LIMIT, MemoryFilesystem

__all__ = ["DEFAULT_LIMIT", "MemoryFilesystem"]
