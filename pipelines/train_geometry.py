"""The geometry of every checkpoint of a training run, next to what the model learned.

Each checkpoint folder goes through posctx as any local model would: ``posctx.extract``
(resumable), ``decompose_store`` and ``measure_geometry``. The text settings are measured on
plain text of the training corpus at every randomization level (windows of the training
length), so the levels differ only in the model. The addition settings are measured on
held-out problems, one per context (``windows="documents"``), so position t is the same
character slot in every context; their topics are the number of carries of the ordinary sum.

Outputs of one setting, under ``OUT``::

    geometry.csv                every measurement by step and layer, with losses and accuracy
    geometry.md                 the headline columns of the same
    final_norm.csv, .md         the last layer of the last checkpoint, after vs before ln_f
    figures/STEP_METRIC.png     each headline measurement against step, a line per layer
    geometry/step-N/            hidden.zarr and decomposition.zarr of each checkpoint
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import posctx
from pipelines.common import markdown_table
from pipelines.train_config import TrainConfig
from pipelines.train_data import MAX_CARRY_TOPIC, addition_test_set, write_jsonl
from pipelines.train_loop import read_record
from posctx.decomposition.stores import decompose_store
from posctx.geometry import metrics_table

#: The measurements followed across training, with their labels in tables and figures.
HEADLINE: dict[str, str] = {
    "pos_stable_rank": "pos stable rank",
    "smooth_low_share": "low-frequency share",
    "relative_norm": "relative norm",
    "ctx_within": "ctx within",
    "ctx_between": "ctx between",
}
#: What the model learned, per checkpoint (columns copied from its training record).
LEARNED = ("train_loss", "held_out_loss", "accuracy", "digit_accuracy", "train_seconds")


def measured_corpus(config: TrainConfig, out: Path) -> posctx.CorpusConfig:
    """The text each checkpoint is measured on (held-out problems are written once)."""
    if config.task == "addition":
        path = out / "addition-test.jsonl"
        if not path.exists():  # made once per run, not once per checkpoint
            n_topics = min(MAX_CARRY_TOPIC, config.width) + 1
            per_topic = -(-config.contexts // n_topics)
            rows = addition_test_set(config.seed + 1, per_topic, config.width, config.carry)
            write_jsonl(rows, path)
        return posctx.CorpusConfig(spec=str(path), seed=config.seed, windows="documents")
    return posctx.CorpusConfig(spec=config.corpus, seed=config.seed)


def extract_config(
    config: TrainConfig,
    corpus: posctx.CorpusConfig,
    checkpoint: Path,
    *,
    final_norm: str = "after",
    layers: tuple[int, ...] = (),
) -> posctx.ExtractConfig:
    """How one checkpoint is extracted: every layer, raw text tokens, float32."""
    return posctx.ExtractConfig(
        corpus=corpus,
        model=posctx.ModelConfig(
            name=str(checkpoint),
            batch_size=config.extract_batch_size,
            device=config.device,
            special_tokens="none",
            final_norm=final_norm,
            layers=layers,
        ),
        store=posctx.StoreConfig(contexts=config.contexts, length=config.sequence_length),
    )


def measure_checkpoint(
    config: TrainConfig, extract: posctx.ExtractConfig, folder: Path, progress: bool
) -> pd.DataFrame:
    """Extract (resuming), decompose and measure one checkpoint; its per-layer table."""
    hidden = str(folder / "hidden.zarr")
    posctx.extract(extract, hidden, progress=progress)
    dec = decompose_store(
        hidden, str(folder / "decomposition.zarr"), moments=True, mode="w"
    ).decomposition
    params = posctx.GeometryParams(max_contexts=config.max_contexts, seed=config.seed)
    metrics = posctx.measure_geometry(dec, params=params, progress=False)
    return metrics_table(metrics).reset_index()


def checkpoint_geometry(
    config: TrainConfig,
    out: Path,
    checkpoints: Sequence[Path],
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Every checkpoint's measurements, one row per step and layer, with its losses and
    accuracy; writes ``geometry.csv``, ``geometry.md`` and the figures."""
    corpus = measured_corpus(config, out)
    frames = []
    for checkpoint in checkpoints:
        record = read_record(checkpoint)
        step = int(record["step"])
        table = measure_checkpoint(
            config,
            extract_config(config, corpus, checkpoint),
            out / "geometry" / f"step-{step:07d}",
            progress,
        )
        table.insert(0, "step", step)
        table.insert(0, "setting", config.name)
        for key in LEARNED:
            table[key] = record.get(key)
        frames.append(table)
        echo(f"{config.name}: measured step {step}")
    geometry = pd.concat(frames, ignore_index=True)
    geometry.to_csv(out / "geometry.csv", index=False)
    (out / "geometry.md").write_text(markdown_table(headline(geometry)) + "\n", encoding="utf-8")
    plot_against_step(geometry, out / "figures")
    return geometry


def headline(geometry: pd.DataFrame) -> pd.DataFrame:
    """The columns the closing tables show: setting, step, layer, the headline measurements,
    the losses and (addition) the accuracy."""
    learned = [c for c in LEARNED if c != "train_seconds" and geometry[c].notna().any()]
    keep = ["setting", "step", "layer", *HEADLINE, *learned]
    return geometry[[c for c in keep if c in geometry.columns]]


def final_norm_effect(
    config: TrainConfig, out: Path, checkpoint: Path, *, progress: bool = True
) -> pd.DataFrame:
    """The last layer of ``checkpoint`` measured after ``ln_f`` (transformers' last hidden
    state) and before it (the last block's residual stream); writes ``final_norm.csv``."""
    corpus = measured_corpus(config, out)
    step = int(read_record(checkpoint)["step"])
    rows = []
    for where in ("after", "before"):
        extract = extract_config(
            config, corpus, checkpoint, final_norm=where, layers=(config.n_layer,)
        )
        folder = out / "geometry" / f"step-{step:07d}-last-{where}-norm"
        table = measure_checkpoint(config, extract, folder, progress)
        table.insert(0, "final_norm", where)
        table.insert(0, "step", step)
        table.insert(0, "setting", config.name)
        rows.append(table)
    effect = pd.concat(rows, ignore_index=True)
    effect.to_csv(out / "final_norm.csv", index=False)
    shown = effect[["setting", "step", "layer_name", "final_norm", *HEADLINE]]
    (out / "final_norm.md").write_text(markdown_table(shown) + "\n", encoding="utf-8")
    return effect


def plot_against_step(geometry: pd.DataFrame, out: Path) -> list[Path]:
    """One figure per headline measurement: a line per layer against training step (the
    step axis is symmetric-log, as checkpoints halve towards the start)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, label in HEADLINE.items():
        fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
        for layer, group in geometry.groupby("layer"):
            ax.plot(group["step"], group[metric], marker="o", label=f"layer {layer}")
        _step_axis(ax, geometry["step"])
        ax.set_ylabel(label)
        ax.set_title(str(geometry["setting"].iloc[0]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2)
        path = out / f"step_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    written.append(_plot_learning(geometry, out / "step_learning.png"))
    return written


def _step_axis(ax: Any, steps: pd.Series) -> None:
    """Training step on a symmetric-log axis, linear up to the first checkpoint after 0."""
    positive = steps[steps > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
    ax.set_xlabel("training step")


def _plot_learning(geometry: pd.DataFrame, path: Path) -> Path:
    """Held-out loss against step, and (addition) the exact-answer accuracy beside it."""
    import matplotlib.pyplot as plt

    per_step = geometry.groupby("step").first().reset_index()
    fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
    ax.plot(per_step["step"], per_step["held_out_loss"], marker="o", color="C0")
    _step_axis(ax, per_step["step"])
    ax.set_ylabel("held-out loss (nats per token)", color="C0")
    ax.set_title(str(geometry["setting"].iloc[0]))
    ax.grid(alpha=0.3)
    if per_step["accuracy"].notna().any():
        right = ax.twinx()
        right.plot(per_step["step"], per_step["accuracy"], marker="s", color="C3")
        right.set_ylabel("exact answers", color="C3")
        right.set_ylim(-0.02, 1.02)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_settings(geometries: Sequence[pd.DataFrame], out: Path) -> pd.DataFrame:
    """The final checkpoint of each setting side by side: ``comparison.csv``/``.md`` and one
    figure per headline measurement (a line per setting against layer), for the
    randomization levels and for carry vs no carry."""
    finals = [g[g["step"] == g["step"].max()] for g in geometries]
    table = headline(pd.concat(finals, ignore_index=True))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown_table(table) + "\n", encoding="utf-8")
    _plot_comparison(table, out / "figures")
    return table


def _plot_comparison(table: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    families = {
        "randomization": table[table["setting"].str.startswith("text-")],
        "addition": table[table["setting"].str.startswith("addition-")],
    }
    for family, frame in families.items():
        if frame.empty:
            continue
        for metric, label in HEADLINE.items():
            fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
            for setting, group in frame.groupby("setting", sort=True):
                ax.plot(group["layer"], group[metric], marker="o", label=str(setting))
            ax.set_xlabel("layer (0 = embeddings)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.set_title(f"{family}: final checkpoints")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
            fig.savefig(out / f"{family}_{metric}.png", dpi=110)
            plt.close(fig)


def read_geometry(out: Path) -> pd.DataFrame:
    """A setting's ``geometry.csv`` as written."""
    frame: Any = pd.read_csv(out / "geometry.csv")
    return frame


__all__ = [
    "HEADLINE",
    "LEARNED",
    "checkpoint_geometry",
    "compare_settings",
    "extract_config",
    "final_norm_effect",
    "headline",
    "measure_checkpoint",
    "measured_corpus",
    "plot_against_step",
    "read_geometry",
]
