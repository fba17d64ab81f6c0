"""posctx.store.layout: blocks, the default chunk size and the schema of a new store."""

from __future__ import annotations

import dataclasses
from typing import Any

import dask.array as da
import numpy as np
import pytest

from posctx.store.layout import (
    DEFAULT_CHUNK_BYTES,
    Block,
    build_dataset,
    default_chunk_contexts,
    plan_blocks,
)
from posctx.testing import raise_if_dask_computes


def test_a_block_knows_its_size_and_is_immutable() -> None:
    block = Block(index=2, start=8, stop=10)
    assert block.size == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        block.stop = 12  # type: ignore[misc]  # frozen on purpose


@pytest.mark.parametrize(
    ("n", "chunk", "sizes"),
    [(8, 4, [4, 4]), (9, 4, [4, 4, 1]), (3, 10, [3]), (5, 1, [1] * 5), (0, 4, [])],
)
def test_blocks_are_chunk_aligned_and_numbered_in_order(
    n: int, chunk: int, sizes: list[int]
) -> None:
    blocks = plan_blocks(n, chunk)
    assert [b.size for b in blocks] == sizes
    assert [b.index for b in blocks] == list(range(len(sizes)))
    assert all(b.start == b.index * chunk for b in blocks)


@pytest.mark.parametrize("chunk", [0, -4])
def test_blocks_need_a_positive_chunk(chunk: int) -> None:
    with pytest.raises(ValueError, match="chunk_contexts must be >= 1"):
        plan_blocks(10, chunk)


def test_default_chunk_holds_about_64_mib_per_chunk() -> None:
    assert DEFAULT_CHUNK_BYTES == 2**26
    per_context = 128 * 7 * 384 * 4  # MiniLM: T=128, 7 hidden states of 384 float32
    assert default_chunk_contexts(128, 7, 384, 4) == 2**26 // per_context == 48
    assert default_chunk_contexts(128, 7, 384, 2) == 97  # float16: twice the contexts
    assert default_chunk_contexts(4096, 81, 8192, 4) == 1  # never less than one context


def _dataset(**overrides: object) -> tuple[Any, dict[str, Any]]:
    kwargs: dict[str, object] = dict(
        token_ids=np.arange(30, dtype=np.int64).reshape(10, 3) + 70_000,
        topic=np.array(["a", "b"] * 5),
        source=np.array([f"doc{i}" for i in range(10)]),
        offset=np.arange(10) * 3,
        layers=(0, 2, 4),
        layer_names=("embeddings", "block_2", "block_4"),
        hidden_size=5,
        storage_dtype="float16",
        chunk_contexts=4,
        chunk_layers=2,
        attrs={"posctx_kind": "hidden", "posctx": {"config": {}}},
    )
    kwargs.update(overrides)
    return build_dataset(**kwargs)  # type: ignore[arg-type]


def test_the_schema_is_built_lazily_with_every_label() -> None:
    with raise_if_dask_computes():
        ds, _ = _dataset()
    assert ds.hidden.dims == ("context", "position", "layer", "dim")
    assert ds.hidden.shape == (10, 3, 3, 5) and ds.hidden.dtype == np.float16
    assert isinstance(ds.hidden.data, da.Array)
    assert ds.hidden.data.chunks == ((4, 4, 2), (3,), (2, 1), (5,))
    assert ds.token_id.dtype == np.int32 and int(ds.token_id.max()) == 70_029
    assert ds.block_complete.dtype == np.uint8 and ds.block_complete.shape == (3,)
    assert ds.block_start.values.tolist() == [0, 4, 8]
    assert ds.layer.values.tolist() == [0, 2, 4]
    assert ds.layer_name.values.tolist() == ["embeddings", "block_2", "block_4"]
    assert ds.topic.values.tolist()[:3] == ["a", "b", "a"] and ds.topic.dtype == object
    assert ds.offset.values[-1] == 27 and ds.offset.dtype == np.int64
    for name in ("context", "position", "dim"):
        assert ds[name].values.tolist() == list(range(ds.sizes[name]))


def test_the_encoding_stores_hidden_raw_in_block_chunks_and_one_marker_per_chunk() -> None:
    _, encoding = _dataset()
    assert encoding == {
        "hidden": {"chunks": (4, 3, 2, 5), "compressors": None},
        "token_id": {"chunks": (4, 3)},
        "block_complete": {"chunks": (1,), "_FillValue": None},
    }
    _, encoding = _dataset(chunk_layers=0)  # 0: every layer in one chunk
    assert encoding["hidden"] == {"chunks": (4, 3, 3, 5), "compressors": None}


def test_the_attrs_always_say_what_the_store_is_and_are_copied() -> None:
    record = {"config": {"a": 1}}
    attrs = {"title": "t", "posctx_kind": "decomposition"}
    ds, _ = _dataset(attrs=attrs, provenance=record)
    attrs["title"] = "changed"
    record["config"] = {}
    assert ds.attrs == {
        "title": "t",
        "posctx_kind": "hidden",
        "posctx_schema": 1,
        "posctx": {"config": {"a": 1}},
    }
    ds, _ = _dataset(attrs={"posctx": {"from": "attrs"}})  # the record as before posctx 0.2
    assert ds.attrs["posctx"] == {"from": "attrs"}
