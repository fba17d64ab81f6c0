"""A disk that fills up mid-extraction: a clear error, finished blocks kept, resume completes.

Local disks are filled by making zarr's one local write function fail with ENOSPC; object
storage by an in-memory fsspec filesystem with a quota, reached through its own URL scheme.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from fsspec.implementations.memory import MemoryFileSystem

from posctx.cli import main


class FillingUp:
    """Lets ``allowed`` hidden-state chunks through, then every further one fails ENOSPC."""

    def __init__(self, allowed: int | None) -> None:
        self.allowed = allowed
        self.written = 0

    def check(self, path: str) -> None:
        if "hidden/c/" not in path or self.allowed is None:
            return
        if self.written >= self.allowed:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        self.written += 1


class QuotaMemoryFileSystem(MemoryFileSystem):
    """fsspec's memory filesystem whose writes go through a :class:`FillingUp` quota."""

    protocol = ("quotamem",)
    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    quota = FillingUp(None)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> Any:
        self.quota.check(path)
        return super().pipe_file(path, value, mode=mode, **kwargs)


fsspec.register_implementation("quotamem", QuotaMemoryFileSystem, clobber=True)


def _args(model: Path, out: str) -> list[str]:
    return [
        "extract",
        "--model",
        str(model),
        "--corpus",
        "stdlib",
        "--contexts",
        "12",
        "--length",
        "16",
        "--chunk-contexts",
        "2",
        "--batch-size",
        "3",
        "--quiet",
        "--out",
        out,
    ]


def _posctx(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the console entry point in this process: (exit status, stdout + stderr)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["posctx", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _hidden(location: str) -> np.ndarray:
    return np.asarray(zarr.open_group(location, mode="r", use_consolidated=False)["hidden"][...])


def _markers(location: str) -> list[int]:
    group = zarr.open_group(location, mode="r", use_consolidated=False)
    return np.asarray(group["block_complete"][...]).tolist()


@pytest.fixture(scope="module")
def reference(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
    from posctx.extraction import extract

    out = tmp_path_factory.mktemp("full-disk") / "ref.zarr"
    config = ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=str(tiny_models["bert"]), batch_size=3),
        store=StoreConfig(contexts=12, length=16, chunk_contexts=2),
    )
    extract(config, str(out), progress=False)
    return _hidden(str(out))


def _fill_then_resume(
    model: Path,
    out: str,
    quota: FillingUp,
    reference: np.ndarray,
    capsys: pytest.CaptureFixture[str],
) -> None:
    quota.allowed = 3
    # Statistics committed (and markers set) after every block: the blocks written before the
    # disk filled are then finished (by default a failure loses up to 30 s of work).
    os.environ["POSCTX_FLUSH_SECONDS"] = "0"
    try:
        code, output = _posctx(_args(model, out), capsys)
    finally:
        del os.environ["POSCTX_FLUSH_SECONDS"]
    assert code == 2
    message = output.strip()
    assert "No space left on device" in message and "free space" in message, message
    assert "blocks already finished are kept" in message and "Traceback" not in message
    # Chunks of 2 contexts, batches of 3: forward groups of 2 blocks, each committed once its
    # blocks are written. The disk filled within the second group: the first is kept.
    assert _markers(out) == [1, 1, 0, 0, 0, 0]
    np.testing.assert_array_equal(_hidden(out)[:4], reference[:4])

    # A decomposition refuses the interrupted store unless told to use the finished blocks,
    # and then records which it used.
    dec = out.rsplit(".zarr", 1)[0] + "-dec.zarr"
    code, output = _posctx(["decompose", out, "--out", dec], capsys)
    assert code == 2 and "4 of 6 blocks are not written yet" in output, output
    code, output = _posctx(["decompose", out, "--out", dec, "--complete-only"], capsys)
    assert code == 0, output
    record = json.loads(zarr.open_group(dec, mode="r").attrs["posctx_decomposition"])
    assert record["complete_only"] == {"blocks_used": 2, "blocks_total": 6, "contexts_total": 12}
    assert record["contexts_used"] == [[0, 4]]

    quota.allowed = None  # space freed
    code, output = _posctx(_args(model, out), capsys)
    assert code == 0, output
    assert "4 blocks written, 2 already done" in output
    np.testing.assert_array_equal(_hidden(out), reference)

    # Updating the partial decomposition from the finished store reads only the new contexts,
    # and its record no longer says it came from an interrupted store.
    full = out.rsplit(".zarr", 1)[0] + "-full.zarr"
    code, output = _posctx(["decompose", out, "--from", dec, "--out", full], capsys)
    # The statistics serve every context now: the update reads no hidden state at all.
    assert code == 0 and "decomposed from the statistics kept during extraction" in output, output
    record = json.loads(zarr.open_group(full, mode="r").attrs["posctx_decomposition"])
    assert record["contexts_used"] == [[0, 12]] and "complete_only" not in record


def test_local_disk_full_mid_extraction(
    tiny_models: dict[str, Path],
    tmp_path: Path,
    reference: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import zarr.storage._local as local

    quota = FillingUp(None)
    original = local._put

    def put(path: Path, value: Any, exclusive: bool = False) -> int:
        quota.check(path.as_posix())
        return original(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", put)
    _fill_then_resume(tiny_models["bert"], str(tmp_path / "full.zarr"), quota, reference, capsys)


def test_object_store_full_mid_extraction(
    tiny_models: dict[str, Path], reference: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    QuotaMemoryFileSystem.store.clear()
    quota = QuotaMemoryFileSystem.quota
    _fill_then_resume(tiny_models["bert"], "quotamem://bucket/full.zarr", quota, reference, capsys)
