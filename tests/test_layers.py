"""The layers of edge/ as docs/architecture.md states them.

- ``edge.core`` is pure: none of its modules imports an I/O library
  (asyncio, sockets, sqlite3, aiohttp, ...) or another layer of edge/.
- Imports point one way: appliance -> store, origin, http -> core.
- No import circle between edge's modules; fill and steering never import each
  other, and edge imports neither.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
IO_MODULES = {
    "asyncio",
    "socket",
    "ssl",
    "sqlite3",
    "aiohttp",
    "aiobotocore",
    "aiofiles",
    "httptools",
    "uvloop",
    "selectors",
    "subprocess",
    "threading",
    "concurrent",
    "shutil",
    "prometheus_client",
}
# what each folder of edge/ may import from edge/ (besides itself)
ALLOWED = {
    "core": {"core"},
    "http": {"core", "http"},
    "store": {"core", "store"},
    "origin": {"core", "origin", "http"},
    "appliance": {"core", "http", "store", "origin", "appliance", "config"},
}


def imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def edge_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in (ROOT / "edge").rglob("*.py")}


def test_core_is_pure() -> None:
    bad = []
    for path in (ROOT / "edge" / "core").rglob("*.py"):
        for name in imports(path):
            top = name.split(".")[0]
            if top in IO_MODULES:
                bad.append(f"{path.name} imports {name}")
            outside = top == "edge" and not name.startswith("edge.core")
            if outside and name not in ("edge", "edge.__version__"):
                bad.append(f"{path.name} imports {name}")
    assert not bad, bad


def test_layers_point_one_way() -> None:
    bad = []
    for name, path in edge_modules().items():
        parts = name.split(".")
        if len(parts) < 3:
            continue  # edge/cli.py, serve.py, config.py tie the layers together
        layer = parts[1]
        if layer not in ALLOWED:
            continue
        for imp in imports(path):
            ip = imp.split(".")
            if ip[0] != "edge" or len(ip) < 2 or ip[1] == "__version__":
                continue
            if ip[1] not in ALLOWED[layer]:
                bad.append(f"{name} imports {imp}")
    assert not bad, bad


def test_no_import_circle_in_edge() -> None:
    mods = edge_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for imp in imports(path):
            # the longest prefix that is one of edge's modules
            parts = imp.split(".")
            for n in range(len(parts), 1, -1):
                cand = ".".join(parts[:n])
                if cand in mods and cand != name:
                    deps.add(cand)
                    break
        graph[name] = deps - {"edge"}
    # packages import their own modules through __init__ only for docs; ignore
    # a package's edge to its own children
    for name in graph:
        graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        seen[n] = 1
        stack.append(n)
        for d in graph.get(n, ()):
            if seen.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack, d]))
            if d not in seen:
                visit(d)
        stack.pop()
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n)


def test_parts_depend_one_way() -> None:
    bad = []
    for part, banned in (("edge", {"fill", "steering", "demo"}), ("fill", {"steering", "demo"})):
        for path in (ROOT / part).rglob("*.py"):
            for imp in imports(path):
                if imp.split(".")[0] in banned:
                    bad.append(f"{path.relative_to(ROOT)} imports {imp}")
    for path in (ROOT / "steering").rglob("*.py"):
        for imp in imports(path):
            if imp.split(".")[0] in {"fill", "demo"}:
                bad.append(f"{path.relative_to(ROOT)} imports {imp}")
    assert not bad, bad
