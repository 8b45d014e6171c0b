"""``--config FILE``: the stack's options from an INI file in the style of ``/etc/nfs.conf``.

The file has sections, and in each the long names of the command-line options
as keys (``nfs-port = 2049``, not ``--nfs-port``)::

    [nfsstack]                    # the whole stack, and the RPC core every service shares
    state-dir = /var/lib/nfsstack
    exports = /etc/exports

    [nfsd]
    nfs-port = 2049
    threads = 64

Every option lives in one section (:data:`SECTIONS`); an option no section
names (one added later) lives in ``[nfsstack]``.  Flags take ``yes``/``no``,
``true``/``false``, ``on``/``off`` or ``1``/``0``.  Key names are
case-insensitive and ``_`` may stand for ``-``; ``#`` and ``;`` start a comment
(at the start of a line, or after a space).  ``--config`` itself has no key: a
file does not include another.

As ``exportfs`` does for ``/etc/exports``, a mistake is an error, not a
warning: an unknown section, an unknown key (with the section it belongs in,
or the nearest known name), a key given twice, a value the option's own
coercer (the one the command line uses) refuses, each reported as
``FILE:LINE: ...``, every one of the file at once.

The command line wins: :func:`command_line_options` tells which options the
command line gave (with the same ``getopt`` call :class:`usage.Options`
makes), and :func:`apply_config` fills in only the others.  A file's value for
an option the command line also gives is still checked.
"""

from __future__ import annotations

import configparser
import difflib
import getopt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.python import reflect, usage

#: Section -> the options it holds.  The sections follow ``/etc/nfs.conf`` (``[nfsd]``, ``[mountd]``,
#: ``[statd]``), with a section for each service nfs.conf does not configure.
SECTIONS: dict[str, tuple[str, ...]] = {
    # The stack as a whole, and the RPC core every service shares.
    "nfsstack": ("exports", "state-dir", "bind", "max-record", "idle-timeout", "max-connections", "log-level",
                 "partial", "keytab", "local-realms"),
    # The portmapper (rpcbind) on port 111, or the system's rpcbind it registers with.
    "portmap": ("portmap-port", "system-rpcbind", "remote-calls", "rpcbind-socket"),
    "nfsd": ("nfs-port", "threads", "workers", "grace-time", "no-aio-fsync", "backend", "memory-limit",
             "search-entries", "search-seconds"),
    "mountd": ("mountd-port",),
    "nlockmgr": ("nlm-port",),
    "statd": ("statd-port",),
    # nfsd-status: HTTP /status, /metrics, /healthz on port 1110.
    "status": ("status-port", "status-bind", "status-allow"),
    # nfsd-keepalive: the UDP keepalives between peers (and from clients), on the status port.
    "keepalive": ("peers", "keepalive-interval", "keepalive-misses", "keepalive-key", "node-name"),
}

#: Where an option that :data:`SECTIONS` does not name lives.
DEFAULT_SECTION = "nfsstack"

#: Options that have no key in a file.
NOT_IN_FILE = frozenset({"config"})

#: What a flag's value may be.
FLAG_VALUES = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}

_KEY_LINE = re.compile(r"^(?P<key>[^=\s#;][^=]*?)\s*=")


class ConfigError(Exception):
    """What is wrong with a configuration file: one ``FILE:LINE: ...`` line per mistake."""


@dataclass(frozen=True)
class Setting:
    """One key of the file: which option it sets, to what, and where it was written."""

    option: str
    value: str
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def section_of(option: str) -> str:
    """The section an option's key is written in."""
    for section, options in SECTIONS.items():
        if option in options:
            return section
    return DEFAULT_SECTION


def option_table(options_class: type[usage.Options]) -> dict[str, Callable[[str], object] | None]:
    """Every option of an :class:`usage.Options` class that a file may set: name -> its coercer (``None``: a flag).

    Read from ``optParameters`` and ``optFlags`` as :class:`usage.Options` reads them (a parameter without a
    coercer takes the string).
    """
    table: dict[str, Callable[[str], object] | None] = {}
    flags: list = []
    reflect.accumulateClassList(options_class, "optFlags", flags)
    for flag in flags:
        table[flag[0]] = None
    parameters: list = []
    reflect.accumulateClassList(options_class, "optParameters", parameters)
    for parameter in parameters:
        coerce = parameter[4] if len(parameter) > 4 and parameter[4] is not None else str
        table[parameter[0]] = coerce
    for name in NOT_IN_FILE:
        table.pop(name, None)
    return table


def _normal_key(key: str) -> str:
    return key.strip().lower().replace("_", "-")


def _line_numbers(text: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """The line of each section header and of each key's first line (configparser does not keep them)."""
    sections: dict[str, int] = {}
    keys: dict[tuple[str, str], int] = {}
    section = None
    for number, line in enumerate(text.splitlines(), 1):
        header = configparser.ConfigParser.SECTCRE.match(line)
        if header:
            section = header.group("header")
            sections.setdefault(section, number)
            continue
        key = _KEY_LINE.match(line)
        if key and section is not None:
            keys.setdefault((section, _normal_key(key.group("key"))), number)
    return sections, keys


def _parser_error(path: str, e: configparser.Error, lines: list[str]) -> str:
    """configparser's complaint as ``FILE:LINE: ...`` lines."""
    if isinstance(e, configparser.MissingSectionHeaderError):
        return f"{path}:{e.lineno}: a key before any [section]: {e.line.strip()!r}"
    if isinstance(e, configparser.DuplicateOptionError):
        return f"{path}:{e.lineno}: {e.option} is set twice in [{e.section}]"
    if isinstance(e, configparser.DuplicateSectionError):
        return f"{path}:{e.lineno}: section [{e.section}] appears twice"
    if isinstance(e, configparser.ParsingError):
        return "\n".join(f"{path}:{n}: not a [section] or a key = value line: {lines[n - 1].strip()!r}"
                         for n, _ in e.errors)
    return f"{path}: {e}".replace("\n", " ")


def read_config(path: str, known: Iterable[str]) -> dict[str, Setting]:
    """Read a file: option name -> :class:`Setting`, for the options of ``known`` it sets.

    Raises :class:`ConfigError` for a file that cannot be read or parsed, a section or key that is not one of
    ``known``'s (placed by :func:`section_of`), or an option set twice.  Values are not checked here.
    """
    known = set(known) - NOT_IN_FILE
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e}") from e
    # No DEFAULT section (its keys would land in every section) and no %-interpolation: a section named ""
    # cannot be written, so [DEFAULT] is an unknown section like any other.
    parser = configparser.ConfigParser(
        delimiters=("=",), comment_prefixes=("#", ";"), inline_comment_prefixes=("#", ";"),
        interpolation=None, default_section="", empty_lines_in_values=False, strict=True,
    )
    parser.optionxform = _normal_key  # type: ignore[method-assign,assignment]
    try:
        parser.read_string(text, source=path)
    except configparser.Error as e:
        raise ConfigError(_parser_error(path, e, text.splitlines())) from e
    section_lines, key_lines = _line_numbers(text)
    home = {name: section_of(name) for name in known}
    errors: list[tuple[int, str]] = []
    settings: dict[str, Setting] = {}
    for section in parser.sections():
        line = section_lines.get(section, 0)
        if section not in SECTIONS and section != DEFAULT_SECTION:
            errors.append((line, f"{path}:{line}: unknown section [{section}] (known: "
                                 + ", ".join(f"[{s}]" for s in SECTIONS) + ")"))
            continue
        for key, value in parser.items(section, raw=True):
            line = key_lines.get((section, key), section_lines.get(section, 0))
            if "\n" in value:
                errors.append((line, f"{path}:{line}: {key}: a value is one line (the next line is indented)"))
            elif key in known and home[key] == section:
                settings[key] = Setting(key, value, path, line)
            elif key in known:
                errors.append((line, f"{path}:{line}: {key} belongs in [{home[key]}], not [{section}]"))
            else:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                errors.append((line, f"{path}:{line}: unknown key {key!r} in [{section}]{hint}"))
    if errors:
        raise ConfigError("\n".join(message for _, message in sorted(errors)))
    return settings


def parse_flag(setting: Setting) -> bool:
    """A flag's value: yes/no, true/false, on/off, 1/0."""
    try:
        return FLAG_VALUES[setting.value.strip().lower()]
    except KeyError:
        raise ConfigError(f"{setting.where}: {setting.option} is a flag: yes or no, not {setting.value!r}") from None


def command_line_options(options: usage.Options, argv: list[str]) -> set[str]:
    """The long names of the options ``argv`` gives, found as :meth:`usage.Options.parseOptions` finds them.

    An ``argv`` that ``getopt`` refuses gives the empty set: ``parseOptions`` then reports the mistake.
    """
    try:
        given, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.error:
        return set()
    names = set()
    for opt, _ in given:
        name = opt[2:] if opt.startswith("--") else opt[1:]
        name = options.synonyms.get(name, options.synonyms.get(name.replace("-", "_"), name))
        names.add(name.replace("_", "-"))
    return names


def apply_config(options: usage.Options, path: str, given: Iterable[str] = ()) -> dict[str, Setting]:
    """Set ``options`` from the file at ``path``, except the options in ``given`` (the command line's).

    Every value is checked with the option's coercer, including those the command line overrides; flags are
    set to 1 or 0 as :class:`usage.Options` does; an empty value of an option whose default is ``None`` (such
    as ``exports =``) leaves it ``None``.  Returns the settings the file made.  Raises
    :class:`ConfigError` naming file and line.
    """
    table = option_table(type(options))
    settings = read_config(path, table)
    given = set(given)
    errors: list[tuple[int, str]] = []
    values: dict[str, object] = {}
    for name, setting in settings.items():
        coerce = table[name]
        try:
            if coerce is None:
                values[name] = int(parse_flag(setting))
            elif not setting.value.strip() and options.defaults.get(name) is None:
                values[name] = None  # "exports =": the option's default, none
            else:
                values[name] = coerce(setting.value.strip())
        except ConfigError as e:
            errors.append((setting.line, str(e)))
        except ValueError as e:
            errors.append((setting.line, f"{setting.where}: {name}: {e}"))
    if errors:
        raise ConfigError("\n".join(message for _, message in sorted(errors)))
    applied = {}
    for name, value in values.items():
        if name not in given:
            options[name] = value
            applied[name] = settings[name]
    return applied
