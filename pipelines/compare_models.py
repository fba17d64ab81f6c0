"""Several models side by side on one corpus: every layer-wise measurement against relative
depth, one panel per measurement, and a wide table (one column per model).

    python -m pipelines.compare_models --models minilm,gpt2,bert-base-uncased --corpora stdlib \
        --out runs/compare

Models of different depth are aligned by relative depth (layer / last layer). Writes
``OUT/comparison.png``, ``OUT/comparison.csv`` (measurement x layer, a column per model),
``OUT/comparison.md`` and ``OUT/metrics.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd

from pipelines.common import (
    CONTEXT_SETTINGS,
    PipelineConfig,
    check_inputs,
    config_from_options,
    markdown_table,
    pipeline_options,
    run_one,
    short,
)
from posctx.cli import run_cli

#: The panels: low rank, size, smoothness, curve, topic clustering, incoherence.
COMPARED = {
    "pos_stable_rank": "stable rank of pos",
    "relative_norm": "relative norm of pos",
    "smooth_low_share": "low-frequency share (smoothness)",
    "spiral_turns": "turns of the pos curve",
    "ctx_within": "ctx |cos| within topics",
    "ctx_between": "ctx |cos| between topics",
    "orth_max_cos": "max |cos| pos-ctx",
    "share_pos": "variance share of pos",
}


def wide(metrics: pd.DataFrame, corpus: str) -> pd.DataFrame:
    """Measurement x layer rows, one column per model (the side-by-side table)."""
    subset = metrics[metrics["corpus"] == corpus]
    long = subset.melt(
        id_vars=["model", "layer"], value_vars=list(COMPARED), var_name="measurement"
    )
    table = long.pivot_table(
        index=["measurement", "layer"], columns="model", values="value", sort=False
    )
    return table.reindex(columns=list(dict.fromkeys(subset["model"]))).reset_index()


def plot_comparison(metrics: pd.DataFrame, corpus: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subset = metrics[metrics["corpus"] == corpus]
    cols = 4
    rows = -(-len(COMPARED) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4 * cols, 3 * rows), layout="constrained", squeeze=False
    )
    for ax, (name, title) in zip(axes.flat, COMPARED.items(), strict=False):
        for model, group in subset.groupby("model", sort=False):
            ax.plot(group["depth"], group[name], marker="o", label=short(str(model)))
        if name == "orth_max_cos" and "orth_max_cos_random" in subset:
            base = subset.groupby("depth")["orth_max_cos_random"].mean()
            ax.plot(base.index, base.values, color="grey", linestyle=":", label="random")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("layer / last layer")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(COMPARED) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"posctx: models compared on {corpus}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_comparison(
    config: PipelineConfig, *, client: Any = None, progress: bool = True
) -> pd.DataFrame:
    """Every model on the first corpus; writes the comparison files, returns all metrics.

    Every model is checked before the first one runs (:func:`check_inputs`).
    """
    corpus = config.corpora[0]
    check_inputs(config, corpora=[corpus])
    metrics = pd.concat(
        [
            run_one(config, model, corpus, client=client, progress=progress)
            for model in config.models
        ],
        ignore_index=True,
    )
    out = Path(config.out)
    metrics.to_csv(out / "metrics.csv", index=False)
    table = wide(metrics, corpus)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown_table(table) + "\n", encoding="utf-8")
    plot_comparison(metrics, corpus, out / "comparison.png")
    return metrics


@click.command(name="compare_models", context_settings=CONTEXT_SETTINGS)
@pipeline_options()
def command(quiet: bool, **settings: Any) -> pd.DataFrame:
    """Several models side by side on the first of --corpora: every layer-wise measurement
    against relative depth, one panel per measurement, and a table with a column per model."""
    config = config_from_options(**settings)
    metrics = run_comparison(config, progress=not quiet)
    click.echo(markdown_table(wide(metrics, config.corpora[0])))
    return metrics


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the command on ``argv`` (default: ``sys.argv[1:]``) and return every measurement.

    A wrong input ends as it does for ``posctx``: one line ``error: ...`` and exit status 2.
    """
    metrics: pd.DataFrame = run_cli(command, argv)
    return metrics


if __name__ == "__main__":
    main()
