"""Imports run one way: no cycles, layers only import downward, kernels stay pure numpy.

The graph is read from the source (every ``import`` statement, at module level or inside a
function, type-checking imports included), so a cycle hidden behind a lazy import counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sources import imported_names
from tests.sources import module_files as _module_files

ROOT = Path(__file__).resolve().parents[1] / "posctx"

#: The package's units (top-level modules and subpackages) from the bottom up: a unit may
#: import only units listed before it. docs/design.md draws the same order.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("types", "errors", "_version", "_deprecated", "progress"),
    ("config", "fused"),
    ("sums",),
    ("store", "corpus", "model", "cluster", "fastread"),
    ("extraction", "decomposition", "validate"),
    ("geometry",),
    ("plots", "summary", "testing", "interactive"),
    ("attention", "report"),
    ("demo",),
    ("cli",),
    ("__main__",),
)

#: Kernel modules: pure numpy (and numba); no labelled arrays, graphs or models.
KERNEL_MODULES = (
    "posctx.decomposition.kernels",
    "posctx.fused",
    "posctx.geometry.kernels",
    "posctx.attention.kernels",
    "posctx.validate.kernels",
    "posctx.sums",
)
KERNEL_FORBIDDEN = ("xarray", "dask", "distributed", "torch", "transformers", "zarr")


def module_files() -> dict[str, Path]:
    """``posctx.a.b`` -> its file, for every module of the package."""
    return _module_files(ROOT)


def internal_graph() -> dict[str, set[str]]:
    """Module -> the posctx modules it imports (a ``from pkg import sub`` edge goes to ``sub``)."""
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for module, path in files.items():
        for name in imported_names(path, module):
            if name in files and name != module:
                graph[module].add(name)
    # `from pkg import sub` yields both pkg and pkg.sub: keep only the submodule.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def unit(module: str) -> str | None:
    """The unit (``posctx.<unit>...``) a module belongs to; ``None`` for ``posctx`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_graph_is_read() -> None:
    """Guard: the checks below would pass on an empty graph."""
    graph = internal_graph()
    assert len(graph) > 50
    assert "posctx.decomposition.kernels" in graph["posctx.decomposition.graph"]


def test_no_module_import_cycle() -> None:
    assert cycles(internal_graph()) == []


def test_no_cycle_between_subpackages() -> None:
    units: dict[str, set[str]] = {}
    for module, targets in internal_graph().items():
        src = unit(module)
        if src is None:
            continue
        units.setdefault(src, set()).update(
            dst for t in targets if (dst := unit(t)) is not None and dst != src
        )
    assert cycles(units) == []


def test_units_only_import_downward() -> None:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    graph = internal_graph()
    units = {unit(m) for m in graph} - {None}
    assert units <= set(rank), f"add {sorted(units - set(rank))} to LAYERS"
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if (src := unit(module)) is not None
        and (dst := unit(target)) is not None
        and rank[dst] >= rank[src]
        and dst != src
    )
    assert upward == []


@pytest.mark.parametrize("kernel", KERNEL_MODULES)
def test_kernel_modules_import_no_arrays_library(kernel: str) -> None:
    files = module_files()
    modules = [m for m in files if m == kernel or m.startswith(kernel + ".")]
    assert modules, f"{kernel} is not a module of posctx"
    bad = sorted(
        f"{module} imports {name}"
        for module in modules
        for name in imported_names(files[module], module)
        if name.split(".")[0] in KERNEL_FORBIDDEN
    )
    assert bad == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a planted two-module cycle and a self-import are reported."""
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"d"}}
    assert cycles(graph) == [["a", "b"], ["d"]]
