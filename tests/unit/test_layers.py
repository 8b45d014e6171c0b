"""The layers of the stack point down only (issue 19, point 5; docs: DESIGN.md "Where the layout is heading").

Bottom to top::

    0  leaves        nfsstack.xdr, nfsstack.logs, nfsstack.statefile   (import nothing of nfsstack)
    1  RPC core      nfsstack.rpc.*                                     (imports leaves only: no program)
    2  exports       nfsstack.exports.*: the exports file, the table, handles, identities, the admission
                     policy                                             (imports rpc and leaves: no program)
    3  programs      nfsstack.portmap, .mount, .nfs3, .nlm, .nsm, .cluster, and the modules they share:
                     nfsstack.refusals, .config
    4  assembly      nfsstack.service, nfsstack.tap, nfsstack.cli, nfsstack.startup, nfsstack.workers (nfsd's
                     worker processes, supervised), nfsstack.worker (one of them)
    5  the plugin    twisted/plugins/nfsstack_plugin.py

Every import of every module is read with :mod:`ast` (module level and inside functions, ``import X``
and ``from X import Y``, relative ones, and ``__import__``/``import_module`` of a literal name), without
importing anything.  No import may point to a higher layer.  Inside layer 3 a program imports another
unit (another program, or one of the shared modules) only along an edge listed in
:data:`PROGRAM_EDGES`: the ones that exist today.  A new edge fails, naming its file and line; an edge
that goes away must leave the list too, so the list stays the truth.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
PLUGIN = REPO / "twisted" / "plugins" / "nfsstack_plugin.py"

LEAF, RPC, EXPORTS, PROGRAM, ASSEMBLY, PLUGIN_LAYER = range(6)
LAYER_NAMES = ["leaf", "rpc", "exports", "program", "assembly", "plugin"]

#: The units of each layer, by the first two parts of a module's name (a package is one unit).
UNITS = {
    "nfsstack": LEAF,  # the package itself (empty __init__)
    "nfsstack.xdr": LEAF,
    "nfsstack.logs": LEAF,
    "nfsstack.statefile": LEAF,
    "nfsstack.rpc": RPC,
    "nfsstack.exports": EXPORTS,
    "nfsstack.portmap": PROGRAM,
    "nfsstack.mount": PROGRAM,
    "nfsstack.nfs3": PROGRAM,
    "nfsstack.nfsacl": PROGRAM,
    "nfsstack.nlm": PROGRAM,
    "nfsstack.nsm": PROGRAM,
    "nfsstack.cluster": PROGRAM,
    "nfsstack.refusals": PROGRAM,
    "nfsstack.config": PROGRAM,
    "nfsstack.service": ASSEMBLY,
    "nfsstack.tap": ASSEMBLY,
    "nfsstack.cli": ASSEMBLY,
    "nfsstack.startup": ASSEMBLY,
    "nfsstack.workers": ASSEMBLY,
    "nfsstack.worker": ASSEMBLY,
    "twisted.plugins.nfsstack_plugin": PLUGIN_LAYER,
}

#: The imports from one unit of layer 3 into another that exist today, as (importing module, imported
#: module): mountd and nfsd log the refusals of the admission policy (nfsstack.exports.policy), rate-limited.
#: What the programs share about exports (the table, handles, identities, the policy) is the layer below.
PROGRAM_EDGES = {
    ("nfsstack.mount.program", "nfsstack.refusals"),
    ("nfsstack.nfs3.program", "nfsstack.refusals"),
    # NFS_ACL runs in nfsd's frame (its admission and identity) over nfsd's storage interface, and speaks
    # nfsd's types (file handles, nfsstat3, post_op_attr).
    ("nfsstack.nfsacl.program", "nfsstack.nfs3.frame"),
    ("nfsstack.nfsacl.program", "nfsstack.nfs3.codec"),
    ("nfsstack.nfsacl.program", "nfsstack.nfs3.interface"),
    ("nfsstack.nfsacl.codec", "nfsstack.nfs3.codec"),
    ("nfsstack.nfsacl.codec", "nfsstack.nfs3.client"),
    ("nfsstack.nfsacl.codec", "nfsstack.nfs3.interface"),
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module
    path: Path
    line: int

    def where(self) -> str:
        try:
            shown = self.path.relative_to(REPO)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"


def module_name(path: Path) -> str:
    if path == PLUGIN:
        return "twisted.plugins.nfsstack_plugin"
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    """True if ``name`` is a module or package of src/."""
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_in(tree: ast.AST, module: str, is_package: bool, path: Path) -> Iterator[Import]:
    """Every nfsstack module that ``tree`` imports, wherever the import statement stands."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # ``from nfsstack.nfs3 import handles`` imports the module nfsstack.nfs3.handles.
                yield Import(module, sub if is_module(sub) else base, path, node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                yield Import(module, node.args[0].value, path, node.lineno)


def ours(name: str) -> bool:
    return name == "nfsstack" or name.startswith("nfsstack.") or name == "twisted.plugins.nfsstack_plugin"


def unit_of(name: str) -> Optional[str]:
    """The unit (key of :data:`UNITS`) a module belongs to, None if it has no layer."""
    if name in UNITS:
        return name
    parts = name.split(".")
    for n in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:n])
        if head in UNITS and head != "nfsstack":
            return head
    return None


def layer_of(name: str) -> Optional[int]:
    unit = unit_of(name)
    return None if unit is None else UNITS[unit]


def all_imports(files: Optional[list[Path]] = None) -> list[Import]:
    found = []
    for path in files if files is not None else sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [i for i in imports_in(tree, module_name(path), path.name == "__init__.py", path) if ours(i.target)]
    return found


def sources() -> list[Path]:
    return sorted(SRC.joinpath("nfsstack").rglob("*.py")) + [PLUGIN]


def wrong_way(imports: list[Import]) -> list[str]:
    """Messages for the imports that point up a layer, or that leave layer 2 by a path not listed."""
    problems = []
    for i in dict.fromkeys(imports):  # ``from X import a, b`` once
        src, dst = layer_of(i.source), layer_of(i.target)
        if src is None:
            problems.append(f"{i.where()}: {i.source} has no layer (place it in UNITS)")
        elif dst is None:
            problems.append(f"{i.where()}: {i.source} imports {i.target}, which has no layer (a module that does "
                            "not exist, or a new one to place in UNITS)")
        elif dst > src:
            problems.append(f"{i.where()}: {i.source} ({LAYER_NAMES[src]}) imports {i.target} "
                            f"({LAYER_NAMES[dst]}): an import pointing up")
        elif src == LEAF and dst == LEAF and i.target != i.source:
            problems.append(f"{i.where()}: {i.source} is a leaf and imports {i.target}")
        elif (src == dst == PROGRAM and unit_of(i.source) != unit_of(i.target)
              and (i.source, i.target) not in PROGRAM_EDGES):
            problems.append(f"{i.where()}: {i.source} imports {i.target}, from one program to another, "
                            "and that edge is not in PROGRAM_EDGES")
    return problems


# -- the stack ---------------------------------------------------------------------


def test_every_module_has_a_layer():
    unplaced = [str(p.relative_to(REPO)) for p in sources() if layer_of(module_name(p)) is None]
    assert not unplaced, f"modules with no layer (add them to UNITS): {unplaced}"


def test_no_import_points_up_or_across_unlisted():
    problems = wrong_way(all_imports())
    assert not problems, "imports that break the layering:\n" + "\n".join(problems)


def test_rpc_imports_no_program():
    bad = [f"{i.where()}: {i.target}" for i in all_imports() if unit_of(i.source) == "nfsstack.rpc"
           and layer_of(i.target) not in (LEAF, RPC)]
    assert not bad, "nfsstack.rpc imports above itself:\n" + "\n".join(bad)


def test_exports_imports_no_program():
    bad = [f"{i.where()}: {i.target}" for i in all_imports() if unit_of(i.source) == "nfsstack.exports"
           and layer_of(i.target) not in (LEAF, RPC, EXPORTS)]
    assert not bad, "nfsstack.exports imports above itself:\n" + "\n".join(bad)


def test_the_programs_that_admit_clients_use_the_exports_layer():
    """mountd, nfsd and nlockmgr admit clients through the one policy, nfsstack.exports.policy."""
    users = {i.source for i in all_imports() if i.target == "nfsstack.exports.policy"}
    assert {"nfsstack.mount.program", "nfsstack.nfs3.program", "nfsstack.nlm.program"} <= users, users


def test_xdr_imports_nothing_of_nfsstack():
    bad = [f"{i.where()}: {i.target}" for i in all_imports() if i.source == "nfsstack.xdr"]
    assert not bad, "nfsstack.xdr imports:\n" + "\n".join(bad)


def test_program_edges_are_exactly_the_listed_ones():
    found: dict[tuple[str, str], list[str]] = {}
    for i in all_imports():
        if (layer_of(i.source) == layer_of(i.target) == PROGRAM and unit_of(i.source) != unit_of(i.target)):
            found.setdefault((i.source, i.target), []).append(i.where())
    new = [f"{', '.join(found[e])}: {e[0]} -> {e[1]}" for e in sorted(set(found) - PROGRAM_EDGES)]
    gone = sorted(PROGRAM_EDGES - set(found))
    assert not new, "program-to-program imports not in PROGRAM_EDGES:\n" + "\n".join(new)
    assert not gone, f"edges in PROGRAM_EDGES that no module has any more (remove them): {gone}"


def test_the_plugin_only_asks_the_assembly():
    targets = {unit_of(i.target) for i in all_imports([PLUGIN])}
    assert targets <= {"nfsstack.service", "nfsstack.tap"}, targets


# -- the check itself: a wrong-way import is caught, wherever it stands ------------


@pytest.mark.parametrize(
    "module, code, expected",
    [
        ("nfsstack/rpc/wrong.py", "def f():\n    from nfsstack.portmap.types import uaddr\n",
         "nfsstack.rpc.wrong (rpc) imports nfsstack.portmap.types (program)"),
        ("nfsstack/rpc/wrong.py", "import nfsstack.nfs3.codec\n",
         "nfsstack.rpc.wrong (rpc) imports nfsstack.nfs3.codec (program)"),
        ("nfsstack/rpc/wrong.py", "from ..nfs3 import codec\n",
         "nfsstack.rpc.wrong (rpc) imports nfsstack.nfs3.codec (program)"),
        ("nfsstack/rpc/wrong.py", "from ..exports import handles\n",
         "nfsstack.rpc.wrong (rpc) imports nfsstack.exports.handles (exports)"),
        ("nfsstack/exports/wrong.py", "from nfsstack.nfs3.codec import Stat\n",
         "nfsstack.exports.wrong (exports) imports nfsstack.nfs3.codec (program)"),
        ("nfsstack/exports/wrong.py", "def f():\n    from ..refusals import RefusalLog\n",
         "nfsstack.exports.wrong (exports) imports nfsstack.refusals (program)"),
        ("nfsstack/xdr.py", "x = __import__('nfsstack.rpc.message')\n",
         "nfsstack.xdr (leaf) imports nfsstack.rpc.message (rpc)"),
        ("nfsstack/logs.py", "from nfsstack import statefile\n", "nfsstack.logs is a leaf and imports nfsstack.statefile"),
        ("nfsstack/newthing.py", "import os\nfrom nfsstack import xdr\n", "nfsstack.newthing has no layer"),
        ("nfsstack/nfs3/wrong.py", "from nfsstack.service import makeService\n",
         "nfsstack.nfs3.wrong (program) imports nfsstack.service (assembly)"),
        ("nfsstack/mount/wrong.py", "class A:\n    def f(self):\n        from nfsstack.nlm import program\n",
         "nfsstack.mount.wrong imports nfsstack.nlm.program, from one program to another"),
    ],
)
def test_a_wrong_way_import_is_caught(tmp_path, module, code, expected):
    path = SRC / module  # never written: parsed from the string, named as if it were there
    tree = ast.parse(code)
    imports = [i for i in imports_in(tree, module_name(path), False, path) if ours(i.target)]
    problems = wrong_way(imports)
    assert problems and expected in problems[0], problems
    assert f"src/{module}:" in problems[0], "the message names the file and line"


#: The NFSv3 procedures and their frame: they speak the protocol and reach storage only through the filesystem
#: interface (nfs3/interface.py), never by system calls of their own.
PROCEDURE_MODULES = ("attributes", "changes", "data", "directories", "fsinfo", "frame", "program", "interface")
#: What would let a procedure touch the exported files by itself.
STORAGE_MODULES = ("os", "posix", "ctypes", "shutil", "pathlib", "io", "fcntl", "mmap", "nfsstack.nfs3.local")


@pytest.mark.parametrize("name", PROCEDURE_MODULES)
def test_nfs_procedures_reach_storage_only_through_the_interface(name):
    path = SRC / "nfsstack" / "nfs3" / f"{name}.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    wrong = [f"src/nfsstack/nfs3/{name}.py:{line}: imports {module}" for module, line in found
             if any(module == m or module.startswith(m + ".") for m in STORAGE_MODULES)]
    assert not wrong, "a procedure module reaching storage by itself:\n" + "\n".join(wrong)


def test_every_package_is_installed():
    """pyproject.toml names the packages one by one (the plugin directory needs it): a new package must be there,
    or a non-editable install would lack it."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(SRC).parts) for p in (SRC / "nfsstack").rglob("__init__.py")}
    assert packages <= listed, f"not in pyproject.toml's packages: {sorted(packages - listed)}"
