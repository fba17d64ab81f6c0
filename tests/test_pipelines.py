"""Each pipeline end to end on tiny inputs: its files exist and hold the numbers posctx gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import posctx
from pipelines import cluster, compare_models, table1, topic_corpus
from pipelines.common import TABLE1_COLUMNS, PipelineConfig, config_from_options
from posctx.errors import PosctxError

SMALL = [
    "--contexts",
    "12",
    "--length",
    "16",
    "--batch-size",
    "4",
    "--max-contexts",
    "12",
    "--quiet",
]


def test_table1_over_two_models_and_two_corpora(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    topics = tmp_path / "topics"
    topics.mkdir()
    for name in ("alpha", "beta"):
        (topics / f"{name}.txt").write_text(f"{name} text about {name} things. " * 300)
    out = tmp_path / "t1"
    models = f"{tiny_models['bert']},{tiny_models['gpt2']}"
    metrics = table1.main(
        ["--models", models, "--corpora", f"stdlib,{topics}", "--out", str(out), *SMALL]
    )
    table = pd.read_csv(out / "table1.csv")
    assert list(table.columns) == ["model", "corpus", "layer", *TABLE1_COLUMNS.values()]
    assert len(table) == 2 * 2 * 3  # models x corpora x layers (embeddings + 2 blocks)
    assert table["stable rank"].between(1, 14).all()  # at most T-2 positions after dropping 2
    assert table["relative norm"].between(0, 1).all()
    assert (out / "table1.md").read_text().startswith("| model | corpus | layer |")
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        f"{c}.png" for c in TABLE1_COLUMNS
    )
    # The table is the library's measurement of the stored decomposition, not a re-derivation.
    dec = posctx.open_decomposition(
        str(out / Path(str(tiny_models["bert"])).name / "stdlib" / "decomposition.zarr")
    )
    direct = posctx.measure_geometry(dec, params=posctx.GeometryParams(max_contexts=12))
    row = metrics[(metrics.model == str(tiny_models["bert"])) & (metrics.corpus == "stdlib")]
    np.testing.assert_allclose(row["pos_stable_rank"], direct.pos_stable_rank.values)


def test_table1_reads_a_config_file_and_flags_override_it(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        f'models = ["{tiny_models["bert"]}"]\ncorpora = ["stdlib"]\ncontexts = 99\nout = "{tmp_path / "cfg"}"\n'
    )
    assert PipelineConfig.from_toml(config).contexts == 99
    metrics = table1.main(["--config", str(config), *SMALL])
    assert set(metrics["layer"]) == {0, 1, 2}
    assert (
        posctx.store_info(str(next((tmp_path / "cfg").rglob("hidden.zarr"))))["arrays"]["hidden"][
            "shape"
        ][0]
        == 12
    )
    (tmp_path / "bad.toml").write_text("modles = []\n")
    with pytest.raises(PosctxError, match=r"unknown key 'modles' \(did you mean 'models'\?\)"):
        PipelineConfig.from_toml(tmp_path / "bad.toml")


def test_pipeline_config_validates_on_construction_and_flags_override_the_file(
    tmp_path: Path,
) -> None:
    with pytest.raises(PosctxError, match="--max-contexts must be >= 1, got 0"):
        PipelineConfig(max_contexts=0)
    with pytest.raises(PosctxError, match="--batch-size must be >= 1"):  # posctx's own check
        PipelineConfig(batch_size=0)
    with pytest.raises(PosctxError, match="models must be a list of names"):
        PipelineConfig(models="minilm")  # type: ignore[arg-type]  # the mistake under test
    config = tmp_path / "run.toml"
    config.write_text('models = ["a", "b"]\ncontexts = 99\nbalance = false\n')
    merged = config_from_options(str(config), models=" c, d,", contexts=12, length=None)
    assert (merged.models, merged.contexts, merged.length, merged.balance) == (
        ("c", "d"),
        12,
        PipelineConfig.length,
        False,
    )
    assert not merged.extract_config("c", "stdlib").corpus.balance


def test_topic_corpus_pipeline_writes_store_decomposition_and_report(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    topics = tmp_path / "topics"
    for name in ("cats", "ships", "taxes"):
        (topics / name).mkdir(parents=True)
        for i in range(2):
            (topics / name / f"{i}.txt").write_text(f"{name} document {i} on {name}. " * 200)
    out = tmp_path / "run"
    metrics = topic_corpus.main(
        [str(topics), "--model", str(tiny_models["bert"]), "--out", str(out), *SMALL]
    )
    assert (out / "hidden.zarr").is_dir() and (out / "decomposition.zarr").is_dir()
    assert (out / "report" / "index.html").is_file()
    assert sorted(set(posctx.open_hidden(str(out / "hidden.zarr")).topic.values)) == [
        "cats",
        "ships",
        "taxes",
    ]
    assert metrics["ctx_within"].notna().all() and metrics["ctx_between"].notna().all()


def test_compare_models_puts_models_side_by_side(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    models = ",".join(str(tiny_models[k]) for k in ("bert", "gpt2", "llama"))
    metrics = compare_models.main(
        ["--models", models, "--corpora", "stdlib", "--out", str(out), *SMALL]
    )
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns) == ["measurement", "layer", *models.split(",")]
    assert set(table["measurement"]) == set(compare_models.COMPARED)
    llama = metrics[metrics.model == str(tiny_models["llama"])].set_index("layer")
    wide = table[table.measurement == "pos_stable_rank"].set_index("layer")[
        str(tiny_models["llama"])
    ]
    np.testing.assert_allclose(wide.values, llama["pos_stable_rank"].values)
    assert (out / "comparison.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cluster_pipeline_equals_the_single_process_one(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    args = ["--models", str(tiny_models["bert"]), "--corpora", "stdlib", *SMALL]
    local = table1.main([*args, "--out", str(tmp_path / "local")])
    distributed = cluster.main([*args, "--out", str(tmp_path / "cluster"), "--workers", "2"])
    pd.testing.assert_frame_equal(local, distributed)
