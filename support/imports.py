"""The runtime's import graph, and the rules it must keep.

Every module of ``mlsched.runtime`` sits on one floor of ``FLOORS``; an import may only
point to a lower floor, so the graph has no cycle and a reader can start at the top
(a command) and walk down to the wire contract. Also checked: no module imports a
private (``_name``) name from another module, and only the modules in
``EXTENSION_USERS`` import the cffi extension ``_bpf``. Imports inside functions count
the same as those at the top of a file.

    python -m support.imports            # the graph, floor by floor; exit 1 on a violation
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "src" / "mlsched" / "runtime"
PACKAGE = "mlsched.runtime"

#: Top floor first. A module may import only modules on floors below its own.
FLOORS: list[tuple[str, list[str]]] = [
    ("entry points", ["cli", "__init__"]),
    ("subcommands", ["commands.decide", "commands.bundle", "commands.run", "commands.replay",
                     "commands.unpin"]),
    ("subcommand support", ["commands.common", "commands.__init__"]),
    ("serving", ["serve", "replay", "api"]),
    ("serving parts", ["stats", "recorder", "featureio", "loadgen"]),
    ("producers on the kernel path", ["injector"]),
    ("engine / kernel path", ["engine", "kernel"]),
    ("bundle", ["bundle"]),
    ("table, interpreter", ["table", "interp"]),
    ("features, table level 2, topology, environment", ["features", "level2", "topology",
                                                          "bpfenv"]),
    ("wire contract and plumbing", ["wire", "errors", "files"]),
    ("generated from bpf/mlsched.h: layouts (pure Python), C extension",
     ["_contract", "_bpf"]),
]
#: The modules that may import the cffi extension directly: the kernel path alone, so every
#: other layer imports where the extension was never built.
EXTENSION_USERS = {"kernel"}


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Module name (relative to the package, e.g. 'commands.run') -> source file."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("")
        if "_native" in rel.parts:
            continue
        out[".".join(rel.parts)] = path
    return out


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    """The package-relative module an ImportFrom names ('' for outside the package)."""
    if node.level == 0:
        name = node.module or ""
        return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else ""
    pkg = mod.split(".")
    is_pkg_init = pkg[-1] == "__init__"
    base = pkg[:-1] if not is_pkg_init else pkg[:-1]
    up = node.level - 1
    if up > len(base):
        return ""                               # above the package: mlsched itself
    base = base[:len(base) - up]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(mod: str, path: Path, known: set[str]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import of the package's own
    modules in ``path``, at any depth."""
    out = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PACKAGE + "."):
                    out.append((a.name[len(PACKAGE) + 1:], "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, node)
            for a in node.names:
                sub = f"{target}.{a.name}" if target else a.name
                if sub in known or (target == "" and node.level and a.name in known):
                    out.append((sub, "", node.lineno))          # a module: from . import x
                elif target:
                    out.append((target, a.name, node.lineno))
    return out


def floor_of(floors: list[tuple[str, list[str]]]) -> dict[str, int]:
    return {m: i for i, (_, mods) in enumerate(floors) for m in mods}


def graph(package_dir: Path = PACKAGE_DIR) -> dict[str, list[tuple[str, str, int]]]:
    mods = modules(package_dir)
    known = set(mods) | {"_bpf", "_contract"}
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def _norm(target: str) -> str:
    return target[:-len(".__init__")] if target.endswith(".__init__") else target


def cycles(g: dict[str, list[tuple[str, str, int]]]) -> list[list[str]]:
    """Import cycles among the package's modules (each as the list of modules around it)."""
    edges = {_norm(m): {_norm(t) for t, _, _ in imps} for m, imps in g.items()}
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                found.append(stack[stack.index(t):] + [t])
            elif t in edges and t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def violations(package_dir: Path = PACKAGE_DIR,
               floors_list: list[tuple[str, list[str]]] | None = None) -> list[str]:
    """Every broken rule, one line each (empty: the layering holds)."""
    floors_list = FLOORS if floors_list is None else floors_list
    floors = floor_of(floors_list)
    mods = modules(package_dir)
    g = graph(package_dir)
    problems = [f"{m}: not on any floor of support/imports.py FLOORS" for m in mods
                if m not in floors]
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(g)]
    for m, imps in g.items():
        for target, name, line in imps:
            where = f"{package_dir.name}/{m.replace('.', '/')}.py:{line}"
            norm = _norm(target)
            tmod = norm if norm in floors else f"{norm}.__init__"
            if name.startswith("_"):
                problems.append(f"{where}: imports private name {name} from {norm}")
            if tmod == "_bpf" and m not in EXTENSION_USERS:
                problems.append(f"{where}: imports the extension _bpf (only"
                                f" {', '.join(sorted(EXTENSION_USERS))} may)")
            if m in floors and tmod in floors and floors[tmod] <= floors[m]:
                problems.append(f"{where}: {m} (floor '{floors_list[floors[m]][0]}') imports"
                                f" {norm} (floor '{floors_list[floors[tmod]][0]}'):"
                                " imports point down only")
    return list(dict.fromkeys(problems))


def main() -> int:
    g = graph()
    for title, mods in FLOORS:
        print(f"== {title}")
        for m in mods:
            if m not in g:
                continue
            targets = sorted({_norm(t) for t, _, _ in g[m]})
            print(f"   {m:<18} -> {', '.join(targets) or '-'}")
    bad = violations()
    for line in bad:
        print(f"VIOLATION {line}")
    print("layering: " + ("OK" if not bad else f"{len(bad)} violations"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
