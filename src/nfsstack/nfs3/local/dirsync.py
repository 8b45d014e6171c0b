"""Directory changes on stable storage before their reply, on ``sync`` exports.

RFC 1813 section 1.6 lists the data-modifying procedures that are synchronous: besides a FILE_SYNC
WRITE and COMMIT, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME and LINK; their reply says the change
survives a crash of the server.  knfsd does it for a ``sync`` export by ``commit_metadata`` on the directory (and
skips it on an ``async`` one, exports(5)); so does this backend, by an fsync of the directory: on a journaling
filesystem (ext4, xfs) that commits the journal, which holds the new or removed entry and the new object's inode
with it.

One fsync of a directory at a time (:class:`DirectorySyncs`), started once the reactor has handled the calls it
has read (``later``): the changes of those calls share it, the changes made while it runs wait for the next, which
starts when it ends and answers all of them at once.  A client removing 32 files of a directory at once costs one
or two fsyncs, not 32, and no change is answered by a sync that may have started before it was made.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.python.failure import Failure

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: The key of the syncs of everything (``sync_all``), where no descriptor of the filesystem is at hand.
EVERYTHING = "everything"
#: The first part of the keys of the syncs of one filesystem, ``(FILESYSTEM, st_dev)``.
FILESYSTEM = "filesystem"

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """syncfs(2): write out and commit everything of the filesystem ``fd`` (a descriptor not O_PATH) is on,
    and nothing of the others; OSError if it fails (EIO: something was lost)."""
    if _libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class DirectorySyncs:
    """fsyncs of directories, one at a time per directory, each shared by every change made before it started.

    ``sync(fd)`` fsyncs a descriptor and answers a Deferred (the kernel's asynchronous fsync, or a pool thread);
    ``later(0, f, *args)`` (the reactor's ``callLater``) runs ``f`` once the reactor has handled what it has read;
    None starts each first sync at once.  What the server cannot open to sync (a directory it may not read; a
    symlink, device or FIFO) has its whole filesystem synced: ``sync_filesystem(fd)`` (a :func:`syncfs`
    answering a Deferred) through ``reopen_root_on(st_dev)``, a new descriptor of that filesystem (an export's
    root opened again), else ``sync_all()`` (a ``sync(2)`` of everything).  Reactor thread only.
    """

    def __init__(self, sync: Callable[[int], defer.Deferred], sync_all: Callable[[], defer.Deferred],
                 later: Optional[Callable[..., Any]] = None,
                 sync_filesystem: Optional[Callable[[int], defer.Deferred]] = None,
                 reopen_root_on: Optional[Callable[[int], Optional[int]]] = None) -> None:
        self.sync = sync
        self.sync_all = sync_all
        self.later = later
        self.sync_filesystem = sync_filesystem
        self.reopen_root_on = reopen_root_on
        #: (device, inode) of a directory being synced, or about to be -> the Deferreds of the changes waiting for
        #: the next sync (for the first one, until it starts).
        self._running: dict[Any, list[defer.Deferred]] = {}
        #: fsyncs started: for the tests and the figures (how many changes each one answered).
        self.syncs = 0

    def __call__(self, dirfd: int, st: os.stat_result) -> defer.Deferred:
        """A Deferred that fires once a sync of the directory ``dirfd`` (whose fstat is ``st``), started after
        now, has ended; it fails with the sync's error."""
        key: Any = (st.st_dev, st.st_ino)
        if key in self._running:  # the running round keeps its descriptor: none is opened
            return self._wait(key, None)
        # An O_PATH descriptor cannot be synced: the directory is opened again, as the server, and kept while
        # syncs of it follow one another.
        try:
            fd: Optional[int] = os.open(".", _DIRECTORY_FLAGS, dir_fd=dirfd)
        except OSError:
            # A plain user's server in a directory it may write but not read: its filesystem is synced instead
            # (slow and rare), one sync at a time as for a directory.
            return self.filesystem(st.st_dev)
        return self._wait(key, fd)

    def filesystem(self, dev: int) -> defer.Deferred:
        """A Deferred that fires once a sync of the whole filesystem ``dev``, started after now, has ended: for
        what has no descriptor the server may sync (a directory it may not read; a symlink, device or FIFO whose
        attributes changed, where knfsd syncs the inode itself).  A ``syncfs(2)`` through an export's root on it
        opened again (closed after the last round, as a directory's), else a ``sync(2)`` of everything
        (:meth:`everything`)."""
        key = (FILESYSTEM, dev)
        if key in self._running:
            return self._wait(key, None)
        reopen = self.reopen_root_on if self.sync_filesystem is not None else None
        fd = reopen(dev) if reopen is not None else None
        if fd is None:
            return self.everything()
        return self._wait(key, fd)

    def everything(self) -> defer.Deferred:
        """A Deferred that fires once a ``sync(2)`` of everything, started after now, has ended: where no
        descriptor of the filesystem to sync is at hand (:meth:`filesystem`)."""
        return self._wait(EVERYTHING, None)

    def _wait(self, key: Any, fd: Optional[int]) -> defer.Deferred:
        """A Deferred of the next sync of ``key``, which starts now (of ``fd``; None: everything) unless one
        runs, whose descriptor the next round uses."""
        d: defer.Deferred = defer.Deferred()
        waiting = self._running.get(key)
        if waiting is not None:
            # The running sync may have started before this change was made: the next one answers it.
            waiting.append(d)
            return d
        self._running[key] = [d]
        if self.later is None:
            self._round(key, fd)
        else:
            self.later(0, self._round, key, fd)
        return d

    def _round(self, key: Any, fd: Optional[int]) -> None:
        """Sync the directory (a filesystem for a :data:`FILESYSTEM` key; ``fd`` None: everything) for the
        changes waiting now; the changes made meanwhile wait for the next round."""
        answers, self._running[key] = self._running[key], []
        self.syncs += 1

        def ended(result: Any) -> None:
            try:
                if self._running[key]:
                    self._round(key, fd)
                else:
                    del self._running[key]
                    if fd is not None:
                        os.close(fd)
            finally:  # whatever happened above, every change this sync answers gets its answer
                for d in answers:
                    if isinstance(result, Failure):
                        d.errback(result)
                    else:
                        d.callback(None)

        try:
            if fd is None:
                synced = self.sync_all()
            elif key[0] == FILESYSTEM:
                synced = self.sync_filesystem(fd)
            else:
                synced = self.sync(fd)
        except Exception:
            synced = defer.fail(Failure())
        synced.addBoth(ended)


def sync_here(dirfd: int, sync: Callable[[int], Any], sync_filesystem: Optional[Callable[[int], Any]] = None) -> None:
    """Sync the directory ``dirfd`` in this (pool) thread, waiting: ``sync(fd)`` on it opened for reading, or
    where the server may not read it, ``sync_filesystem(st_dev)`` (:func:`sync_filesystem_here`)."""
    try:
        fd = os.open(".", _DIRECTORY_FLAGS, dir_fd=dirfd)
    except OSError:
        (sync_filesystem or sync_filesystem_here)(os.fstat(dirfd).st_dev)
        return
    try:
        sync(fd)
    finally:
        os.close(fd)


def sync_filesystem_here(dev: int, reopen_root_on: Optional[Callable[[int], Optional[int]]] = None) -> None:
    """Sync the filesystem ``dev`` in this (pool) thread, waiting: a :func:`syncfs` through
    ``reopen_root_on(dev)`` (a new descriptor, closed here), else (none to be had) a ``sync(2)`` of everything."""
    fd = reopen_root_on(dev) if reopen_root_on is not None else None
    if fd is None:
        os.sync()
        return
    try:
        syncfs(fd)
    finally:
        os.close(fd)
