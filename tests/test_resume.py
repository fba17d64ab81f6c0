"""Resume after a real kill: the finished store equals an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr


def _command(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "posctx",
        "extract",
        "--model",
        "minilm",
        "--corpus",
        "stdlib",
        "--contexts",
        "40",
        "--length",
        "128",
        "--chunk-contexts",
        "2",
        "--batch-size",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]


# Commit the statistics (and so set the marker) after every block, as the kill below expects.
ENV = {**os.environ, "POSCTX_FLUSH_SECONDS": "0"}


def _markers(out: Path) -> int:
    """Marker chunks in place. zarr writes each to ``<n>.<uuid>.partial`` and then renames it,
    so a kill can leave a ``.partial`` file that is not a finished block: not counted."""
    folder = out / "block_complete" / "c"
    return sum(f.name.isdigit() for f in folder.iterdir()) if folder.is_dir() else 0


@pytest.mark.slow
def test_killed_extraction_resumes_to_identical_store(tmp_path: Path) -> None:
    reference, resumed = tmp_path / "reference.zarr", tmp_path / "resumed.zarr"
    subprocess.run(_command(reference), check=True, capture_output=True, env=ENV)

    proc = subprocess.Popen(
        _command(resumed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    deadline = time.monotonic() + 120
    while _markers(resumed) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = _markers(resumed)
    assert 3 <= done_at_kill < 20, f"kill landed after {done_at_kill} of 20 blocks"

    rerun = subprocess.run(_command(resumed), check=True, capture_output=True, text=True, env=ENV)
    assert "resumed" in rerun.stdout
    # A kill between a block's statistics commit and its marker leaves one block counted but
    # unmarked: the resume marks it instead of computing it again.
    written, done = map(
        int, re.search(r"(\d+) blocks written, (\d+) already done", rerun.stdout).groups()
    )
    assert written + done == 20 and done in (done_at_kill, done_at_kill + 1), rerun.stdout

    a, b = xr.open_zarr(reference), xr.open_zarr(resumed)
    assert bool(b.block_complete.all())
    np.testing.assert_array_equal(a.hidden.values, b.hidden.values)
    np.testing.assert_array_equal(a.token_id.values, b.token_id.values)
    for name in ("topic", "source", "offset", "stat_ctx_sum", "stat_ctx_sumsq", "stat_edge"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    # The position sums were merged from other partials (another grouping of the same
    # blocks): equal up to float64 rounding, and each block counted once.
    from posctx.store.statistics import open_statistics

    sums_a, sums_b = open_statistics(str(reference)), open_statistics(str(resumed))
    np.testing.assert_allclose(sums_a.pos_sum.values, sums_b.pos_sum.values, rtol=1e-13, atol=0)
