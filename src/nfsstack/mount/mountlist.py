"""The list of mounts mountd hands out (rpc.mountd's rmtab), kept in the state directory.

``showmount -a`` shows it; it survives restarts.  One JSON object per line,
written to a temporary file and renamed, so a crash never leaves it half
written; a corrupt file is reported and started afresh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from nfsstack.logs import logger
from nfsstack.statefile import write_atomically

log = logger("nfsstack.mount")


#: rpc.mountd's rmtab grows with every client that ever mounted; this one keeps the newest entries only.
MAX_ENTRIES = 1024


class MountList:
    def __init__(self, state_dir: str, limit: int = MAX_ENTRIES) -> None:
        self.path = Path(state_dir) / "rmtab"
        self.limit = limit
        self.entries: list[tuple[str, str]] = []
        self._load()
        if len(self.entries) > self.limit:
            del self.entries[: len(self.entries) - self.limit]
            self._save()

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("cannot read {path}: {e}", path=self.path, e=e)
            return
        for number, line in enumerate(text.splitlines(), 1):
            try:
                item = json.loads(line)
                entry = (str(item["host"]), str(item["dir"]))
            except (ValueError, KeyError, TypeError):
                log.error("{path}:{n}: not a mount entry; ignored", path=self.path, n=number)
                continue
            if entry not in self.entries:
                self.entries.append(entry)

    def _save(self) -> None:
        text = "".join(json.dumps({"host": host, "dir": directory}) + "\n" for host, directory in self.entries)
        write_atomically(self.path, text.encode(), 0o644)

    def add(self, host: str, directory: str) -> None:
        if (host, directory) not in self.entries:
            self.entries.append((host, directory))
            if len(self.entries) > self.limit:
                del self.entries[0]  # the oldest
            self._save()

    def keep_only(self, exported: Callable[[str], bool]) -> list[tuple[str, str]]:
        """Forget the mounts of directories no export holds any more (at start, after a reload); the ones
        forgotten."""
        gone = [e for e in self.entries if not exported(e[1])]
        if gone:
            self.entries = [e for e in self.entries if exported(e[1])]
            self._save()
        return gone

    def remove(self, host: str, directory: str) -> None:
        if (host, directory) in self.entries:
            self.entries.remove((host, directory))
            self._save()

    def remove_host(self, host: str) -> None:
        kept = [e for e in self.entries if e[0] != host]
        if len(kept) != len(self.entries):
            self.entries = kept
            self._save()
