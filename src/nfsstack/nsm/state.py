"""What status (NSM) keeps across restarts, as rpc.statd keeps /var/lib/nfs/state and sm/: the state number
and the monitored hosts.

The state number is odd while the server is up (XNFS 11.1); each start moves
it to the next odd number.  The hosts monitored when the server went down are
the ones to send SM_NOTIFY at the next start (``to_notify``), which is also
what makes a lock grace period worth having.  A corrupt file is reported and
rebuilt, never a reason not to start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from nfsstack.logs import logger
from nfsstack.statefile import write_atomically

log = logger("nfsstack.nsm")


@dataclass(frozen=True, slots=True)
class Monitor:
    """One monitored host and whom to tell when it reboots.

    ``address`` is where to send SM_NOTIFY (the host's IP, as the lock
    manager saw it), ``local`` the name we go by for it (the address it
    reached us at), and ``internal`` marks monitors of the in-process lock
    manager, told directly instead of by an RPC callback.
    """

    mon_name: str
    my_name: str
    my_prog: int
    my_vers: int
    my_proc: int
    priv: str = "00" * 16  # hex
    address: str = ""
    local: str = ""
    internal: bool = False

    @property
    def priv_bytes(self) -> bytes:
        return bytes.fromhex(self.priv)


class NsmState:
    """The state number and monitor list in ``state_dir/nsm``."""

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir) / "nsm"
        self.state = 0
        self.monitors: list[Monitor] = []
        #: Hosts monitored before this start, still to be told of it.
        self.to_notify: list[Monitor] = []

    # -- files ------------------------------------------------------------------------

    def _read_json(self, name: str) -> list[Monitor]:
        path = self.dir / name
        try:
            items = json.loads(path.read_text())
            return [Monitor(**item) for item in items]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as e:
            log.error("{path} is corrupt ({e}): starting it afresh", path=path, e=e)
            return []

    def _write_json(self, name: str, monitors: list[Monitor]) -> None:
        write_atomically(self.dir / name, json.dumps([asdict(m) for m in monitors], indent=1).encode())

    def _save_state(self) -> None:
        write_atomically(self.dir / "state", f"{self.state}\n".encode())

    def start(self) -> int:
        """Advance to the next odd state number; last run's monitors become ``to_notify``."""
        try:
            previous = int((self.dir / "state").read_text().strip())
        except FileNotFoundError:
            previous = 0
        except (OSError, ValueError) as e:
            log.error("{path} is corrupt ({e}): a new state number", path=self.dir / "state", e=e)
            previous = 0
        self.state = previous + (1 if previous % 2 == 0 else 2)
        self.state &= 0x7FFFFFFF
        self._save_state()
        pending = self._read_json("notify.json") + self._read_json("monitors.json")
        seen = set()
        self.to_notify = []
        for m in pending:
            key = (m.address or m.mon_name, m.local)
            if key not in seen:
                seen.add(key)
                self.to_notify.append(m)
        self.monitors = []
        self._write_json("notify.json", self.to_notify)
        self._write_json("monitors.json", [])
        return self.state

    # -- changes --------------------------------------------------------------------------

    def monitor(self, m: Monitor) -> None:
        if m not in self.monitors:
            self.monitors = [x for x in self.monitors if not self._same(x, m.mon_name, m)] + [m]
            self._write_json("monitors.json", self.monitors)

    @staticmethod
    def _same(x: Monitor, mon_name: str, who: Monitor) -> bool:
        return (x.mon_name == mon_name and x.my_name == who.my_name and x.my_prog == who.my_prog
                and x.my_vers == who.my_vers and x.my_proc == who.my_proc)

    def unmonitor(self, mon_name: str, who: Monitor) -> None:
        kept = [x for x in self.monitors if not self._same(x, mon_name, who)]
        if len(kept) != len(self.monitors):
            self.monitors = kept
            self._write_json("monitors.json", self.monitors)

    def unmonitor_all(self, who: Monitor) -> None:
        kept = [x for x in self.monitors if not (x.my_name == who.my_name and x.my_prog == who.my_prog
                                                 and x.my_vers == who.my_vers and x.my_proc == who.my_proc)]
        if len(kept) != len(self.monitors):
            self.monitors = kept
            self._write_json("monitors.json", self.monitors)

    def notified(self, m: Monitor) -> None:
        """``m`` was told of our restart (or given up on)."""
        if m in self.to_notify:
            self.to_notify.remove(m)
            self._write_json("notify.json", self.to_notify)

    def crash(self) -> int:
        """SM_SIMU_CRASH: as if we had rebooted: a new state, every monitored host to be told."""
        self.state = (self.state + 2) & 0x7FFFFFFF
        self._save_state()
        self.to_notify = self.to_notify + [m for m in self.monitors if m not in self.to_notify]
        self.monitors = []
        self._write_json("notify.json", self.to_notify)
        self._write_json("monitors.json", [])
        return self.state

    def matching(self, mon_name: str, address: Optional[str]) -> list[Monitor]:
        """Monitors of the host called ``mon_name``, or at ``address`` (a host may go by its address)."""
        return [m for m in self.monitors if m.mon_name == mon_name or (address and m.address == address)]
