"""The package's import graph has no cycles.

Every module under ``lib/geowall`` is parsed with :mod:`ast` (nothing is imported), and
every import of a ``geowall`` module is an edge: at module level and inside functions
(a function-level import that dodges a loop at import time is still a loop in the
design), ``import geowall.x``, ``from geowall.x import y``, ``from geowall import x``
and relative imports alike. A package's ``__init__`` is its own node (``geowall.sae``),
and a submodule that imports its own package is an edge to that node. Importing
``geowall.a.b`` also runs ``geowall.a``'s ``__init__``, but that is not counted as an
edge: a package's ``__init__`` re-exporting its submodules would otherwise make every
submodule that imports a sibling by its full name a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
PACKAGE = "geowall"


def module_names(root: Path = LIB, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` under ``root`` (``__init__`` as the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module a dotted name refers to: itself, or the longest module prefix of it
    (``geowall.sae.train.TrainConfig`` -> ``geowall.sae.train``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The package modules ``module`` imports anywhere in its file (module or function level)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import name`: name may be a submodule (an edge to it) or an attribute
            # of pkg's __init__ (an edge to the package)
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for t in targets:
            if t == PACKAGE or t.startswith(PACKAGE + "."):
                hit = _resolve(t, modules)
                if hit is not None and hit != module:
                    out.add(hit)
    return out


def import_graph(root: Path = LIB, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or None if it has none.

    Iterative depth-first search (white / grey / black); nodes and edges are visited in
    sorted order so the cycle reported is the same from run to run.
    """
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


# --------------------------------------------------------------------------- the detector


@pytest.mark.parametrize(
    "graph, cyclic",
    [
        ({}, False),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, False),  # a diamond is no cycle
        ({"a": {"a"}}, True),
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"x": set(), "a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"b"}}, True),
        ({"a": {"b"}, "b": {"z"}}, False),  # an edge to a node with no entry of its own
    ],
)
def test_find_cycle_on_small_graphs(graph, cyclic):
    cycle = find_cycle(graph)
    assert (cycle is not None) == cyclic
    if cycle:
        assert cycle[0] == cycle[-1]
        assert all(b in graph[a] for a, b in zip(cycle, cycle[1:]))


def test_find_cycle_names_the_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"b"}}) == ["b", "c", "d", "b"]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_import_graph_reads_every_kind_of_import(tmp_path):
    _write(
        tmp_path,
        {
            "geowall/__init__.py": "",
            "geowall/a.py": "import geowall.b\n",
            "geowall/b.py": "from geowall.sub import c\n",
            "geowall/sub/__init__.py": "from .c import thing\n",
            "geowall/sub/c.py": "def f():\n    from geowall import d\n",
            "geowall/d.py": "from geowall.sub.c import thing as t\nimport numpy\n",
            "geowall/e.py": "from . import a\nfrom .sub import name_in_init\n",
            "geowall/sub/f.py": "from .. import e\nfrom ..sub import c\nfrom geowall.sub import name\n",
        },
    )
    g = import_graph(tmp_path)
    assert g == {
        "geowall": set(),
        "geowall.a": {"geowall.b"},
        "geowall.b": {"geowall.sub.c"},
        "geowall.sub": {"geowall.sub.c"},
        "geowall.sub.c": {"geowall.d"},  # function level counts
        "geowall.d": {"geowall.sub.c"},
        "geowall.e": {"geowall.a", "geowall.sub"},
        "geowall.sub.f": {"geowall.e", "geowall.sub.c", "geowall.sub"},  # its own package __init__ counts
    }
    assert find_cycle(g) == ["geowall.sub.c", "geowall.d", "geowall.sub.c"]


def test_a_planted_cycle_is_found(tmp_path):
    """A function-level import back up is a cycle, and the failure names it."""
    _write(
        tmp_path,
        {
            "geowall/__init__.py": "",
            "geowall/low.py": "def f():\n    from geowall.high import g\n    return g\n",
            "geowall/high.py": "from geowall.low import f\n",
            "geowall/pkg/__init__.py": "from geowall.pkg.mod import x\n",
            "geowall/pkg/mod.py": "x = 1\n",
        },
    )
    assert find_cycle(import_graph(tmp_path)) == ["geowall.high", "geowall.low", "geowall.high"]
    _write(tmp_path, {"geowall/pkg/mod.py": "from geowall import pkg\nx = 1\n"})  # a submodule -> its own __init__
    assert find_cycle(import_graph(tmp_path)) == ["geowall.high", "geowall.low", "geowall.high"]
    _write(tmp_path, {"geowall/low.py": "x = 1\n"})
    assert find_cycle(import_graph(tmp_path)) == ["geowall.pkg", "geowall.pkg.mod", "geowall.pkg"]


# --------------------------------------------------------------------------- the package


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "geowall.sae.train" in graph and "geowall.kernels" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The library layer: what the pipeline's steps build on. None of it reaches up into a step.
LIBRARY = ("geowall.io", "geowall.kernels", "geowall.diskcache", "geowall.geometry", "geowall.sae", "geowall.sources")


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_library_layer_imports_nothing_above_it():
    graph = import_graph()
    up = sorted((m, t) for m, ts in graph.items() if _in(m, LIBRARY) for t in ts if not _in(t, LIBRARY))
    assert not up, "library modules importing pipeline modules: " + ", ".join(f"{m} -> {t}" for m, t in up)
    # the SAE code does not know the model sources (a source may evaluate with it)
    assert not [t for m, ts in graph.items() if _in(m, ("geowall.sae",)) for t in ts if _in(t, ("geowall.sources",))]
