"""The command line: help, info, errors as one line with exit status 2, a small demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from posctx.cli import cli


def _posctx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posctx", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", [[], ["extract"], ["decompose"], ["info"], ["demo"]])
def test_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_extract_info_decompose(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out, dec = tmp_path / "h.zarr", tmp_path / "d.zarr"
    extract = ("extract", "--model", str(tiny_models["bert"]), "--contexts", "9")
    extract += ("--length", "12", "--chunk-contexts", "4", "--quiet", "--out", str(out))
    planned = _posctx(*extract, "--plan-only")
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.startswith("planned ") and "(created): 0 of 3 blocks already" in (
        planned.stdout
    )
    run = _posctx(*extract)
    assert run.returncode == 0, run.stderr
    assert "resumed" in run.stdout and "3 blocks written, 0 already done" in run.stdout
    info = _posctx("info", str(out))
    assert info.returncode == 0, info.stderr
    assert "3/3 written (complete)" in info.stdout
    assert "[CLS]" in info.stdout and "hidden" in info.stdout
    run = _posctx("decompose", str(out), "--out", str(dec))
    assert run.returncode == 0, run.stderr
    assert "embeddings" in run.stdout and dec.is_dir()
    again = _posctx("decompose", str(out), "--out", str(dec))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert _posctx("decompose", str(out), "--out", str(dec), "--overwrite").returncode == 0
    onto_hidden = _posctx("decompose", str(out), "--out", str(out), "--overwrite")
    assert onto_hidden.returncode == 2 and "is a hidden-state store" in onto_hidden.stderr
    assert _posctx("info", str(out)).returncode == 0  # still intact


def test_user_errors_are_one_line_with_status_2(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    for args in (
        ["info", str(tmp_path / "missing.zarr")],
        ["extract", "--out", str(foreign), "--contexts", "4", "--length", "8"],
        ["extract", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "x.zarr")],
    ):
        run = _posctx(*args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert (foreign / "keep.txt").read_text() == "x"


@pytest.mark.slow
def test_demo_small(tmp_path: Path) -> None:
    run = _posctx(
        "demo", "--out", str(tmp_path / "demo"), "--contexts", "24", "--length", "32", "--quiet"
    )
    assert run.returncode == 0, run.stderr
    assert "variance shares" in run.stdout and "block_6" in run.stdout
    assert (tmp_path / "demo" / "hidden.zarr").is_dir()
    assert (tmp_path / "demo" / "decomposition.zarr").is_dir()
