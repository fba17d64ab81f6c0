"""Small extraction set-ups shared by the unit tests: a text corpus and a tiny config."""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics as pydoc_topics
from typing import Any

from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig


def write_corpus(folder: Path, *, words: int = 4000, skip: int = 0) -> Path:
    """A folder of two topic files (``alpha.txt``, ``beta.txt``) of reference-manual prose.

    ``skip`` starts the text further into the manual: the same file names with other words.
    """
    text = " ".join(pydoc_topics[key] for key in sorted(pydoc_topics)).split()
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("alpha", "beta")):
        start = skip + i * words
        (folder / f"{name}.txt").write_text(" ".join(text[start : start + words]) + "\n")
    return folder


def tiny_config(
    model: Path | str,
    corpus: Path | str = "stdlib",
    *,
    contexts: int = 8,
    length: int = 8,
    chunk: int = 4,
    storage_dtype: str = "float32",
    **model_kw: object,
) -> ExtractConfig:
    """An extraction of ``contexts`` x ``length`` tokens in blocks of ``chunk``, batches of 3."""
    model_kw.setdefault("batch_size", 3)
    return ExtractConfig(
        corpus=CorpusConfig(spec=str(corpus)),
        model=ModelConfig(name=str(model), **model_kw),  # type: ignore[arg-type]
        store=StoreConfig(
            contexts=contexts, length=length, chunk_contexts=chunk, storage_dtype=storage_dtype
        ),
    )


def writable_group(path: Path) -> Any:
    """A store's root group for writing, opened from the arrays' own metadata (the
    consolidated copy is what some tests make stale)."""
    import zarr

    return zarr.open_group(str(path), mode="r+", use_consolidated=False)


def set_record(path: Path, **changes: Any) -> None:
    """Change keys of a store's provenance record (``attrs["posctx"]``) in place."""
    from posctx.store.location import consolidate

    group = writable_group(path)
    group.attrs.update(posctx={**dict(group.attrs["posctx"]), **changes})
    consolidate(str(path), None)  # an attrs write drops the consolidated copy: put it back
