"""The exports file, in exports(5) syntax as Linux's nfs-utils reads it.

One export per line: a path, then client specifications each with their
options in parentheses::

    /srv/data   192.168.1.0/24(rw,no_root_squash) *.lab.example(ro) *(ro,all_squash)
    "/srv/with space"  10.0.0.5(rw,insecure)
    /srv/default  -rw,sync  host1 host2         # "-opts": defaults for the clients that follow

Clients: ``*`` (anyone), an IPv4 or IPv6 address, a network (``10.0.0.0/8``,
``10.0.0.0/255.0.0.0``, ``fd00::/8``), a host name (resolved when the file is
loaded), or a wildcard name (``*.example.org``, ``host?``, matched against the
client's reverse lookup).  As exports(5) orders them, the most specific kind
of match wins: host, network, wildcard, then ``*``; within a kind, the first
on the line.

Options: ``ro`` (default) / ``rw``; ``root_squash`` (default) /
``no_root_squash`` / ``all_squash`` / ``no_all_squash``; ``anonuid=N``,
``anongid=N``; ``secure`` (default) / ``insecure``; ``sync`` (default) /
``async``; ``fsid=N`` / ``fsid=root``; ``mountpoint`` / ``mp`` (``=PATH``):
served only while the export (or PATH) is a mount point, as knfsd does;
``subtree_check`` / ``no_subtree_check`` (default) (where an object lies is
checked either way; they differ on a file whose place the kernel does not
settle: ``ExportTable.inside``), ``wdelay`` / ``no_wdelay`` (no effect here);
``sec=`` (below); ``acl`` (default) / ``no_acl``: NFS_ACL (:mod:`nfsstack.nfsacl`) shows and sets the
files' POSIX ACLs, or presents only their mode bits and refuses to set ACLs; ``crossmnt`` / ``nocrossmnt``
and ``nohide`` / ``hide`` with knfsd's meaning (:mod:`nfsstack.exports.table` serves them):

* by default (``hide``) a filesystem mounted below an export is not crossed:
  LOOKUP of its mount point gives the directory it covers, on the export's own
  filesystem, as knfsd does;
* ``nohide`` on an export B whose path is a mount point inside another export
  A: a client that LOOKUPs B's mount point through A gets B's root (B's
  options, if B admits that client), and ``..`` from B's root leads back into A;
* ``crossmnt`` on A: every filesystem mounted below A is served, to the clients
  whose options for A say ``crossmnt``, with A's options, as an export of its
  own whose id derives from A's and from the mount point's path under A, so
  its handles survive a restart.

``sec=FLAVOUR[:FLAVOUR...]``: the security flavours (exports(5) "General Options", RFC 2623 section 2.2.1) a
client may use the export with, in the order of preference MNT tells the client (RFC 1813 section 5.2.1,
``auth_flavors``): ``sys`` (AUTH_SYS, and AUTH_NONE with it; the default), ``krb5`` (RPCSEC_GSS, Kerberos
authentication), ``krb5i`` (and integrity), ``krb5p`` (and privacy), in any subset and order.  Each flavour
must be listed to be admitted: ``sec=krb5p`` refuses a ``krb5`` or ``krb5i`` call as it refuses ``sys``
(knfsd's ``check_nfsd_access`` compares the flavour exactly).  Unlike exports(5), where options written after
a ``sec=`` apply to the flavours it names only, here every option of a client's list applies to all its
flavours; so a list may name ``sec=`` once (a client's own list replaces the ``-`` defaults' ``sec=``), and a
second one is an error rather than a silent difference from exportfs.

Anything else is an error naming the file and line, as are netgroups
(``@group``).

Like ``exportfs``, the parser reports every error of a file at once, and warns
(:attr:`Exports.warnings`) where a file does what it probably does not mean:
options after a space (``/data host (rw)`` gives ``rw`` to everyone), or a
client named twice for one path.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import shlex
import socket
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional

from nfsstack.rpc.message import AuthFlavor, Pseudoflavor

ANON_ID = 65534  # nobody / nogroup

#: The flavours of ``sec=`` as exports(5) names them, and the numbers MNT answers for them: AUTH_SYS (RFC 5531
#: section 8.2) and the Kerberos pseudoflavours (RFC 2623 section 2.2.1).  Plain ints: what a call's
#: CallHeader.security is compared with.
AUTH_NONE, AUTH_SYS = int(AuthFlavor.AUTH_NONE), int(AuthFlavor.AUTH_SYS)
SECURITY_FLAVORS = {"sys": AUTH_SYS, "krb5": int(Pseudoflavor.KRB5), "krb5i": int(Pseudoflavor.KRB5I),
                    "krb5p": int(Pseudoflavor.KRB5P)}
SECURITY_NAMES = {number: name for name, number in SECURITY_FLAVORS.items()} | {AUTH_NONE: "none"}


class ExportsError(ValueError):
    """A bad exports file: each of :attr:`errors` names the file and line; the message holds them all."""

    def __init__(self, *errors: str) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """The options one client gets for one export."""

    read_only: bool = True
    root_squash: bool = True
    all_squash: bool = False
    anonuid: int = ANON_ID
    anongid: int = ANON_ID
    secure: bool = True
    sync: bool = True
    fsid: Optional[str] = None
    #: ``mountpoint``/``mp``: served only while this path ("" = the export's own) is a mount point.
    mountpoint: Optional[str] = None
    #: ``crossmnt``: the filesystems mounted below the export are served too, with these options.
    crossmnt: bool = False
    #: ``nohide``: LOOKUP of this export's path through the export it is mounted in gives this export's root.
    nohide: bool = False
    #: ``subtree_check`` / ``no_subtree_check`` (the default): a file whose place the kernel does not settle
    #: (connected to no directory after its entry was evicted, or given under a name outside) is stale, or served
    #: as lying on the export's filesystem (ExportTable.inside).
    subtree_check: bool = False
    #: ``acl`` (the default) / ``no_acl``: NFS_ACL shows and sets the files' POSIX ACLs, or shows only the mode bits.
    acl: bool = True
    #: ``sec=``: the flavours admitted, in the client's order of preference (AUTH_SYS 1, or a Kerberos
    #: pseudoflavour 390003-390005); AUTH_SYS admits AUTH_NONE calls too, as knfsd does without ``sec=``.
    security: tuple[int, ...] = (AUTH_SYS,)

    def admits(self, flavor: int) -> bool:
        """Whether a call made with ``flavor`` (CallHeader.security: AUTH_NONE, AUTH_SYS or a pseudoflavour)
        may use the export with these options."""
        return flavor in self.security or (flavor == AUTH_NONE and AUTH_SYS in self.security)

    def describe(self) -> str:
        parts = ["ro" if self.read_only else "rw", "sync" if self.sync else "async"]
        parts.append("all_squash" if self.all_squash else ("root_squash" if self.root_squash else "no_root_squash"))
        parts.append("secure" if self.secure else "insecure")
        if self.anonuid != ANON_ID:
            parts.append(f"anonuid={self.anonuid}")
        if self.anongid != ANON_ID:
            parts.append(f"anongid={self.anongid}")
        if self.fsid is not None:
            parts.append(f"fsid={self.fsid}")
        if self.mountpoint is not None:
            parts.append(f"mountpoint={self.mountpoint}" if self.mountpoint else "mountpoint")
        if self.crossmnt:
            parts.append("crossmnt")
        if self.nohide:
            parts.append("nohide")
        if self.subtree_check:
            parts.append("subtree_check")
        if not self.acl:
            parts.append("no_acl")
        if self.security != (AUTH_SYS,):
            parts.append("sec=" + ":".join(SECURITY_NAMES[flavor] for flavor in self.security))
        return ",".join(parts)


# How each option changes ExportOptions; None = accepted, no effect here.
_FLAGS: dict[str, Optional[dict]] = {
    "ro": {"read_only": True},
    "rw": {"read_only": False},
    "root_squash": {"root_squash": True},
    "no_root_squash": {"root_squash": False},
    "all_squash": {"all_squash": True},
    "no_all_squash": {"all_squash": False},
    "secure": {"secure": True},
    "insecure": {"secure": False},
    "sync": {"sync": True},
    "async": {"sync": False},
    "no_subtree_check": {"subtree_check": False},
    "subtree_check": {"subtree_check": True},
    "mountpoint": {"mountpoint": ""},
    "mp": {"mountpoint": ""},
    "wdelay": None,
    "no_wdelay": None,
    "crossmnt": {"crossmnt": True},
    "nocrossmnt": {"crossmnt": False},
    "nohide": {"nohide": True},
    "hide": {"nohide": False},
    "acl": {"acl": True},
    "no_acl": {"acl": False},
}

# Kinds of client specification, most specific first (exports(5), "Machine Name Formats").
HOST, NETWORK, WILDCARD, ANYONE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class ClientSpec:
    text: str
    kind: int
    networks: tuple = ()  # ip_network objects (hosts are /32 or /128)
    pattern: str = ""

    def matches(self, address: str, hostname: Callable[[str], Optional[str]]) -> bool:
        if self.kind == ANYONE:
            return True
        if self.kind == WILDCARD:
            name = hostname(address)
            return name is not None and fnmatch.fnmatchcase(name.lower(), self.pattern)
        ip = _ip(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.networks)


def _ip(address: str):
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class Export:
    """One exported directory and who may mount it with which options."""

    path: str
    clients: tuple[tuple[ClientSpec, ExportOptions], ...]
    line: int = 0
    #: A small number that names the export inside file handles (fsid=N, or derived from the path).
    export_id: int = 0
    #: Not a line of the file but a filesystem mounted below the export at this path, which has ``crossmnt``
    #: (:mod:`nfsstack.exports.table`): served to the clients whose options for that export say ``crossmnt``,
    #: with them.
    crossed_from: str = ""

    def options_for(self, address: str, hostname: Callable[[str], Optional[str]]) -> Optional[ExportOptions]:
        """The options the client at ``address`` gets, or None if no specification matches it."""
        best = None
        for spec, options in self.clients:
            if (best is None or spec.kind < best[0].kind) and spec.matches(address, hostname):
                best = (spec, options)
        if best is None or (self.crossed_from and not best[1].crossmnt):
            return None
        return best[1]

    def client_names(self) -> list[str]:
        return [spec.text for spec, _ in self.clients]


@dataclass
class Exports:
    """All exports of a file, by path."""

    exports: list[Export] = field(default_factory=list)
    source: str = "<none>"
    #: What exportfs would warn about: "FILE:LINE: ..." each.
    warnings: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(self.exports)

    def __len__(self) -> int:
        return len(self.exports)

    def find(self, path: str) -> Optional[Export]:
        path = normalize(path)
        for export in self.exports:
            if export.path == path:
                return export
        return None

    def by_id(self, export_id: int) -> Optional[Export]:
        for export in self.exports:
            if export.export_id == export_id:
                return export
        return None


def normalize(path: str) -> str:
    path = os.path.normpath(path) if path else path
    return "/" + path.lstrip("/") if path.startswith("//") else path


def _export_id(path: str, fsid: Optional[str]) -> int:
    if fsid is not None and fsid.isdigit():
        return int(fsid) & 0xFFFFFFFF
    if fsid == "root" or fsid == "0":
        return 0
    import zlib

    return (zlib.crc32(path.encode("utf-8", "surrogateescape")) & 0x7FFFFFFF) | 1


def _parse_options(text: str, base: ExportOptions, where: str) -> ExportOptions:
    changes: dict = {}
    security_given = False
    for opt in filter(None, (o.strip() for o in text.split(","))):
        name, eq, value = opt.partition("=")
        if not eq:
            if name not in _FLAGS:
                raise ExportsError(f"{where}: unknown export option {name!r}")
            changes.update(_FLAGS[name] or {})
        elif name in ("mountpoint", "mp"):
            if not value.startswith("/"):
                raise ExportsError(f"{where}: {name}= needs an absolute path, not {value!r}")
            changes["mountpoint"] = normalize(value)
        elif name in ("anonuid", "anongid"):
            if not value.isdigit() or int(value) > 0xFFFFFFFF:
                raise ExportsError(f"{where}: {name} needs a number, not {value!r}")
            changes[name] = int(value)
        elif name == "fsid":
            if not (value.isdigit() or value == "root"):
                raise ExportsError(f"{where}: fsid must be a number or 'root' (uuid fsids are not supported)")
            changes["fsid"] = value
        elif name == "sec":
            if security_given:
                # exports(5) gives the options after each sec= to its flavours only; here options apply to
                # every flavour, so a second sec= would not mean what exportfs makes of it.
                raise ExportsError(f"{where}: sec= is given twice; options for some flavours only are not "
                                   f"supported: list every flavour in one sec= (sec=krb5p:sys)")
            security_given = True
            changes["security"] = _parse_security(value, where)
        else:
            raise ExportsError(f"{where}: unknown export option {opt!r}")
    return replace(base, **changes)


def _parse_security(value: str, where: str) -> tuple[int, ...]:
    """The flavours of ``sec=a:b:c``, in that order (the order MNT tells the client: its preference)."""
    flavors: list[int] = []
    for name in value.split(":"):
        flavor = SECURITY_FLAVORS.get(name)
        if flavor is None:
            known = ", ".join(SECURITY_FLAVORS)
            raise ExportsError(f"{where}: unknown security flavour {name!r} in sec={value} (known: {known})")
        if flavor in flavors:
            raise ExportsError(f"{where}: security flavour {name!r} is named twice in sec={value}")
        flavors.append(flavor)
    return tuple(flavors)


def _parse_client(text: str, where: str, resolve: Callable[[str], list[str]]) -> ClientSpec:
    if text in ("*", ""):
        return ClientSpec("*", ANYONE)
    if text.startswith("@"):
        raise ExportsError(f"{where}: netgroups ({text}) are not supported")
    if "/" in text:
        addr, _, mask = text.partition("/")
        try:
            if "." in mask and ":" not in addr:
                net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
            else:
                net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ExportsError(f"{where}: {text!r} is not a network") from None
        return ClientSpec(text, NETWORK, (net,))
    ip = _ip(text)
    if ip is not None:
        return ClientSpec(text, HOST, (ipaddress.ip_network(ip),))
    if any(c in text for c in "*?["):
        return ClientSpec(text, WILDCARD, pattern=text.lower())
    if not all(c.isalnum() or c in "-._" for c in text):
        raise ExportsError(f"{where}: {text!r} is not a client specification")
    addresses = resolve(text)
    if not addresses:
        raise ExportsError(f"{where}: host {text!r} does not resolve")
    return ClientSpec(text, HOST, tuple(ipaddress.ip_network(_ip(a)) for a in addresses if _ip(a) is not None))


def resolve_host(name: str) -> list[str]:
    """Forward lookup of a host name in the exports file (at load time, as exportfs does)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, None)})
    except OSError:
        return []


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def parse_exports(text: str, filename: str = "<exports>", resolve: Callable[[str], list[str]] = resolve_host) -> Exports:
    """Parse an exports file; raise :class:`ExportsError` with every bad line of it."""
    result = Exports(source=filename)
    errors: list[str] = []
    seen: dict[str, int] = {}
    ids: dict[int, str] = {}
    for number, line in _logical_lines(text):
        try:
            export = _parse_line(line, f"{filename}:{number}", number, resolve, result.warnings)
            if export is None:
                continue
            if export.path in seen:
                raise ExportsError(f"{filename}:{number}: {export.path} is already exported on line {seen[export.path]}")
            if export.export_id in ids:
                raise ExportsError(f"{filename}:{number}: {export.path} has the same fsid/export id as "
                                   f"{ids[export.export_id]}")
        except ExportsError as e:
            errors.extend(e.errors)
            continue
        ids[export.export_id] = export.path
        seen[export.path] = number
        result.exports.append(export)
    if errors:
        raise ExportsError(*errors)
    return result


def _parse_line(line: str, where: str, number: int, resolve: Callable[[str], list[str]],
                warnings: list[str]) -> Optional[Export]:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as e:
        raise ExportsError(f"{where}: {e}") from None
    if not words:
        return None
    path, rest = words[0], words[1:]
    if not path.startswith("/"):
        raise ExportsError(f"{where}: export path {path!r} is not absolute")
    path = normalize(path)
    defaults = ExportOptions()
    clients: list[tuple[ClientSpec, ExportOptions]] = []
    errors: list[str] = []
    for word in rest:
        try:
            if word.startswith("-") and not clients:
                defaults = _parse_options(word[1:], defaults, where)
                continue
            host, paren, opts = word.partition("(")
            if paren:
                if not opts.endswith(")") or "(" in opts:
                    raise ExportsError(f"{where}: unbalanced parentheses in {word!r}")
                options = _parse_options(opts[:-1], defaults, where)
            else:
                options = defaults
            if not host:
                # exportfs: "No host name given with /data (rw), suggest *(rw) to avoid warning".
                warnings.append(f"{where}: {word} has no client before it, so it is given to everyone (*); "
                                f"write *{word} if that is meant, or remove the space after the client it belongs to")
            spec = _parse_client(host, where, resolve)
        except ExportsError as e:
            errors.extend(e.errors)
            continue
        if any(spec.text == other.text for other, _ in clients):
            warnings.append(f"{where}: client {spec.text} is named twice for {path}: its first entry's options apply")
        clients.append((spec, options))
    if errors:
        raise ExportsError(*errors)
    if any(options.subtree_check for _, options in clients):
        warnings.append(f"{where}: subtree_check makes the file handles every client of {path} holds stale after "
                        "the server's reboot until they look the names up again (a file held open cannot be): "
                        "no_subtree_check, the default, is meant for almost every export")
    if not clients:
        # exportfs exports to everyone, with a warning; we ask for it to be said.
        raise ExportsError(f"{where}: {path} names no clients (write '*' to export to everyone)")
    fsids = {o.fsid for _, o in clients}
    if len(fsids) > 1:
        raise ExportsError(f"{where}: clients of one export must share its fsid")
    return Export(path, tuple(clients), number, _export_id(path, fsids.pop()))


def load_exports(filename: str, resolve: Callable[[str], list[str]] = resolve_host) -> Exports:
    try:
        with open(filename, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read(1 << 20)
    except OSError as e:
        raise ExportsError(f"{filename}: {e.strerror}") from None
    return parse_exports(text, filename, resolve)
