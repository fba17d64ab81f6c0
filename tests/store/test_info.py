"""posctx.store.info: what `posctx info` shows, as data (--json) and as text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from posctx.cli import cli
from posctx.store.info import STATISTICS_MEMBERS, store_info
from posctx.summary import format_store_info
from posctx.testing import write_large_planted_store


def _bytes(path: Path, *members: str) -> int:
    return sum(
        os.path.getsize(os.path.join(d, f))
        for m in members
        for d, _, files in os.walk(path / m)
        for f in files
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 contexts in blocks of 4: every hidden state, those of the first 6, none; and a
    store without statistics."""
    root = tmp_path_factory.mktemp("info")
    out = {}
    for name, kwargs in (
        ("all", {"statistics": True, "moments": True}),
        ("6", {"statistics": True, "hidden_contexts": 6}),
        ("0", {"statistics": True, "hidden_contexts": 0}),
        ("old", {}),
    ):
        out[name] = root / f"{name}.zarr"
        write_large_planted_store(
            str(out[name]),
            n_contexts=12,
            length=6,
            n_layers=2,
            n_dims=3,
            chunk_contexts=4,
            **kwargs,
        )
    return out


def test_the_record_says_what_the_statistics_keep_and_what_they_weigh(
    stores: dict[str, Path],
) -> None:
    full = store_info(str(stores["all"]))
    assert full["statistics"] == {
        "moments": True,
        "hidden_contexts": None,
        "topics": ["topic0", "topic1", "topic2", "topic3"],
        "edges": [0],
        "partials": 1,
        "blocks_counted": 3,
    }
    assert full["hidden_contexts_stored"] == 12
    assert full["size_on_disk_hidden"] == _bytes(stores["all"], "hidden")
    assert full["size_on_disk_statistics"] == _bytes(stores["all"], *STATISTICS_MEMBERS) > 0
    assert full["size_on_disk"] > full["size_on_disk_hidden"] + full["size_on_disk_statistics"]
    assert json.loads(json.dumps(full)) == full

    sample, none = store_info(str(stores["6"])), store_info(str(stores["0"]))
    assert (sample["hidden_contexts_stored"], none["hidden_contexts_stored"]) == (6, 0)
    assert sample["statistics"]["hidden_contexts"] == 6
    # Blocks 0 and 1 keep hidden states (block 1 those of contexts 4 and 5); block 2 none.
    chunk = 4 * 6 * 2 * 3 * 4
    meta = os.path.getsize(stores["6"] / "hidden" / "zarr.json")
    assert sample["size_on_disk_hidden"] - meta == 2 * chunk
    assert none["size_on_disk_hidden"] == os.path.getsize(stores["0"] / "hidden" / "zarr.json")
    assert none["size_on_disk_statistics"] == sample["size_on_disk_statistics"]

    old = store_info(str(stores["old"]))
    assert old["statistics"] is None and old["size_on_disk_statistics"] == 0
    assert old["hidden_contexts_stored"] == 12
    assert old["size_on_disk_hidden"] == full["size_on_disk_hidden"]


def test_the_text_shows_the_statistics_and_the_sample(stores: dict[str, Path]) -> None:
    lines = format_store_info(store_info(str(stores["6"]))).splitlines()
    assert lines[3].startswith("size       ") and ": hidden states " in lines[3]
    assert lines[5] == (
        "statistics kept: 4 topics, edges [0], no moments; 3/3 blocks counted by 1 partial"
    )
    assert lines[6] == (
        "hidden     states of 6 of 12 contexts (--hidden-contexts 6); statistics of all 12"
    )
    text = format_store_info(store_info(str(stores["all"])))
    assert "with moments; 3/3 blocks counted by 1 partial" in text
    assert "hidden     states of" not in text
    old = format_store_info(store_info(str(stores["old"]))).splitlines()
    assert old[3].endswith(", statistics 0 B")
    assert old[5] == (
        "statistics none (made before posctx 0.2, or with --no-statistics): decompositions read "
        "the hidden states"
    )
    # A record from before these keys: the lines it always had, and no others.
    info = store_info(str(stores["all"]))
    for key in ("size_on_disk_hidden", "size_on_disk_statistics", "statistics"):
        del info[key]
    legacy = format_store_info(info).splitlines()
    assert legacy[3].endswith(" on disk") and not legacy[5].startswith("statistics")


def test_posctx_info_prints_them(stores: dict[str, Path]) -> None:
    text = CliRunner().invoke(cli, ["info", str(stores["0"])])
    assert text.exit_code == 0, text.output
    assert "hidden     states of 0 of 12 contexts (--hidden-contexts 0)" in text.output
    assert ": hidden states " in text.output and "statistics kept: 4 topics" in text.output
    record = CliRunner().invoke(cli, ["info", str(stores["0"]), "--json"])
    data = json.loads(record.output)
    assert data["hidden_contexts_stored"] == 0 and data["statistics"]["partials"] == 1
    assert {"path", "arrays", "size_on_disk", "blocks_complete", "complete", "provenance"} <= set(
        data
    )
