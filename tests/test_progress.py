"""posctx.progress: one tqdm bar on stderr for the dask computations inside, or none at all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import dask.array as da
import pytest

from posctx.progress import dask_progress

ROOT = Path(__file__).resolve().parents[1]


def test_no_bar_is_a_do_nothing_context(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = dask_progress(False, "summing")
    assert isinstance(quiet, nullcontext)
    with quiet:
        assert int(da.ones(8, chunks=2).sum().compute()) == 8
    assert capsys.readouterr() == ("", "")


def test_the_bar_counts_every_task_on_stderr_and_only_inside(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tqdm.dask import TqdmCallback
    from tqdm.std import tqdm

    bar = dask_progress(True, "summing")
    assert isinstance(bar, TqdmCallback)
    # The plain terminal class, never tqdm.auto's notebook widget.
    assert bar.tqdm_class.func is tqdm and bar.tqdm_class.keywords == {"desc": "summing"}
    with bar:
        assert int(da.ones(8, chunks=2).sum().compute()) == 8
    out, err = capsys.readouterr()
    assert out == ""
    done = re.findall(r"summing: 100%\|[^|]*\| (\d+)/(\d+) ", err)
    assert len(done) == 1 and done[0][0] == done[0][1] and int(done[0][1]) >= 4  # 4 chunks at least
    da.ones(4, chunks=2).sum().compute()  # after the block: no bar
    assert capsys.readouterr() == ("", "")


def test_tqdm_is_imported_only_when_a_bar_is_shown() -> None:
    code = (
        "import sys\n"
        "from posctx.progress import dask_progress\n"
        "with dask_progress(False, 'x'):\n"
        "    pass\n"
        "print('tqdm' in sys.modules)\n"
        "dask_progress(True, 'x')\n"
        "print('tqdm' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]
