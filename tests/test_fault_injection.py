"""Crash safety by fault injection: SIGKILL extraction at every store write, resume, compare.

Each case kills a real process (no exception handler runs) and resumes it in another; the
resumed store must equal an uninterrupted run bit for bit, with no temporary files left in
it. CI tries a spread of about 70 of a run's store writes (every k-th, the three kill modes in
turn) plus timed kills and an interrupted extension; ``POSCTX_FAULTS=all`` tries every write
in every mode.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests import faults

EXHAUSTIVE = os.environ.get("POSCTX_FAULTS") == "all"
#: Kill points CI tries per scenario: a run with statistics makes 200+ store writes (each
#: block's data and statistics, a commit of the writer's partial per block, markers), and a
#: kill and resume costs about a second each on two cores.
QUICK_POINTS = 70


def _cases(n: int) -> list[tuple[int, faults.Mode]]:
    """Kill points: every write in every mode, or (CI) an even spread, the modes in turn."""
    if EXHAUSTIVE:
        return [(k, mode) for k in range(n) for mode in faults.MODES]
    step = max(1, -(-n // QUICK_POINTS))
    return [(k, faults.MODES[(k // step) % 3]) for k in range(0, n, step)]


@pytest.fixture(scope="module")
def reference(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """An uninterrupted run: its store's contents, its number of store writes, its time."""
    root = tmp_path_factory.mktemp("fault-reference")
    config = faults.tiny_config(tiny_models["bert"], contexts=12, chunk=2)
    start = time.perf_counter()
    assert faults.run(config, root / "ref.zarr", count_file=root / "count") == 0
    seconds = time.perf_counter() - start
    return {
        "config": config,
        "contents": faults.store_contents(root / "ref.zarr"),
        "writes": int((root / "count").read_text()),
        "seconds": seconds,
    }


def _kill_and_resume(config: dict[str, Any], path: Path, kill: faults.Kill) -> tuple[int, int]:
    killed = faults.run(config, path, kill)
    resumed = faults.run(config, path)
    return killed, resumed


def _check(reference: dict[str, Any], path: Path, label: str) -> None:
    diff = faults.differences(reference, faults.store_contents(path))
    assert not diff, f"{label}: resumed store differs in {diff}"
    assert not faults.leftovers(path), f"{label}: temporary files left: {faults.leftovers(path)}"


def test_kill_at_every_store_write_then_resume_is_identical(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    n = reference["writes"]
    assert n > 30  # creation (metadata, labels, token ids) plus data and marker of 6 blocks
    cases = _cases(n)
    killed = 0
    for k, mode in cases:
        path = tmp_path / f"k{k}-{mode}.zarr"
        died, resumed = _kill_and_resume(reference["config"], path, faults.Kill(k, mode))
        assert resumed == 0, f"resume after a kill at write {k} ({mode}) failed"
        killed += died == -9
        _check(reference["contents"], path, f"kill at write {k} ({mode})")
        shutil.rmtree(path)
    # Write order varies a little between runs (zarr writes metadata concurrently), so a late
    # kill point can fall after the last write; nearly all must have fired.
    assert killed >= len(cases) - 3, f"only {killed} of {len(cases)} kills happened"
    print(f"\n{killed} kills at {n} store writes, {len(cases)} resumed stores identical")


@pytest.fixture(scope="module")
def split_layers(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """An uninterrupted run in the layout of large models: one layer per chunk, one context
    per chunk, so forward groups of 3 blocks (batches of 3)."""
    root = tmp_path_factory.mktemp("fault-split-layers")
    config = faults.tiny_config(tiny_models["bert"], contexts=8, chunk=1, chunk_layers=1)
    assert faults.run(config, root / "ref.zarr", count_file=root / "count") == 0
    import zarr

    hidden = zarr.open_group(str(root / "ref.zarr"), mode="r", use_consolidated=False)["hidden"]
    assert hidden.chunks == (1, 16, 1, 32)  # 3 layers of a context in 3 chunks
    return {
        "config": config,
        "contents": faults.store_contents(root / "ref.zarr"),
        "writes": int((root / "count").read_text()),
    }


def test_kill_anywhere_in_the_split_layer_layout_then_resume_is_identical(
    split_layers: dict[str, Any], tmp_path: Path
) -> None:
    n = split_layers["writes"]
    cases = _cases(n)
    if not EXHAUSTIVE:
        # A quarter of the main layout's spread (CI time): the same protocol, other chunks;
        # POSCTX_FAULTS=all tries every write here too.
        cases = cases[::4]
    killed = 0
    for k, mode in cases:
        path = tmp_path / f"k{k}-{mode}.zarr"
        died, resumed = _kill_and_resume(split_layers["config"], path, faults.Kill(k, mode))
        assert resumed == 0, f"resume after a kill at write {k} ({mode}) failed"
        killed += died == -9
        _check(split_layers["contents"], path, f"split layers: kill at write {k} ({mode})")
        shutil.rmtree(path)
    assert killed >= len(cases) - 3, f"only {killed} of {len(cases)} kills happened"
    print(f"\n{killed} kills at {n} store writes (split layers), {len(cases)} resumes identical")


def test_kills_at_random_times_then_resume_is_identical(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    rng = random.Random(0)
    # Timed now, not with the reference: the machine's load changes how long a run takes.
    start = time.perf_counter()
    assert faults.run(reference["config"], tmp_path / "timing.zarr") == 0
    duration = time.perf_counter() - start
    killed = 0
    runs = 12 if not EXHAUSTIVE else 60
    for i in range(runs):
        seconds = rng.uniform(0.0, duration)
        path = tmp_path / f"t{i}.zarr"
        died, resumed = _kill_and_resume(reference["config"], path, faults.Kill(seconds=seconds))
        assert resumed == 0
        killed += died == -9
        _check(reference["contents"], path, f"kill after {seconds:.3f} s (exit {died})")
        shutil.rmtree(path)
    # Some kills fire after a run finished (runs vary in length): still a valid check.
    assert killed >= runs // 3, f"only {killed} of {runs} kills landed mid-run"
    print(f"\n{killed} of {runs} timed kills landed mid-run; all resumed stores identical")


def test_kill_during_the_resume_too(reference: dict[str, Any], tmp_path: Path) -> None:
    n = reference["writes"]
    for first, second in [(n // 2, 1), (n - 4, 0), (5, n // 3)]:
        path = tmp_path / f"twice-{first}-{second}.zarr"
        assert faults.run(reference["config"], path, faults.Kill(first, "torn")) == -9
        faults.run(reference["config"], path, faults.Kill(second, "after"))
        assert faults.run(reference["config"], path) == 0
        _check(reference["contents"], path, f"kills at writes {first} then {second}")


def test_kill_during_an_extension_then_resume_is_identical(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Growing 7 contexts to 12 (blocks of 3: the short last block grows) survives any kill."""
    small = faults.tiny_config(tiny_models["bert"], contexts=7, chunk=3)
    large = faults.tiny_config(tiny_models["bert"], contexts=12, chunk=3)
    base = tmp_path / "base.zarr"
    assert faults.run(small, base) == 0
    grown = tmp_path / "grown.zarr"
    shutil.copytree(base, grown)
    assert faults.run(large, grown, count_file=tmp_path / "count") == 0
    expected = faults.store_contents(grown)
    n = int((tmp_path / "count").read_text())
    killed = 0
    cases = _cases(n)
    for k, mode in cases:
        path = tmp_path / f"ext-{k}-{mode}.zarr"
        shutil.copytree(base, path)
        died, resumed = _kill_and_resume(large, path, faults.Kill(k, mode))
        assert resumed == 0, f"resume after a kill at extension write {k} failed"
        killed += died == -9
        _check(expected, path, f"kill at extension write {k} ({mode})")
        shutil.rmtree(path)
    assert killed >= len(cases) - 3
    print(f"\n{killed} kills at {n} extension writes, {len(cases)} extended stores identical")
