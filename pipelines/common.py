"""What every pipeline shares: one model x corpus run, configuration files, tables, figures.

Only posctx's public API is used here (``posctx``, ``posctx.geometry``, ``posctx.decomposition``,
``posctx.report``), as a user's own script would.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import tomllib

import posctx
from posctx.decomposition import paper_positions
from posctx.geometry import metrics_table

#: The paper's Table 1 columns, in our names: rank and stable rank of pos, relative norm of
#: pos, and the mean |cos| of ctx vectors within and between topics.
TABLE1_COLUMNS: dict[str, str] = {
    "pos_screenot_rank": "rank (ScreeNOT)",
    "pos_stable_rank": "stable rank",
    "relative_norm": "relative norm",
    "ctx_within": "ctx within",
    "ctx_between": "ctx between",
}


@dataclass(frozen=True)
class PipelineConfig:
    """Settings shared by the pipelines; a TOML file holds the same keys (see ``configs/``)."""

    models: tuple[str, ...] = ("minilm",)
    corpora: tuple[str, ...] = ("stdlib",)
    contexts: int = 512
    length: int = 128
    batch_size: int = 32
    storage_dtype: str = "float32"
    device: str = "cpu"
    dtype: str = "float32"
    max_contexts: int = 2048
    seed: int = 0
    out: str = "runs/pipeline"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path) -> PipelineConfig:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown keys {unknown}; known keys are {sorted(known)}")
        for key in ("models", "corpora"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def add_config_arguments(parser: argparse.ArgumentParser, *, several_models: bool = True) -> None:
    """The flags every pipeline takes; any flag given overrides the ``--config`` file."""
    parser.add_argument("--config", help="TOML file with these settings (flags override it)")
    if several_models:
        parser.add_argument("--models", help="comma-separated: minilm, hub ids, local folders")
    parser.add_argument("--corpora", help="comma-separated corpus specs (stdlib, paths, hf:...)")
    for name, kind in (
        ("contexts", int),
        ("length", int),
        ("batch-size", int),
        ("max-contexts", int),
        ("seed", int),
        ("storage-dtype", str),
        ("device", str),
        ("dtype", str),
        ("out", str),
    ):
        parser.add_argument(f"--{name}", type=kind)


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    config = PipelineConfig.from_toml(args.config) if args.config else PipelineConfig()
    changes: dict[str, Any] = {}
    for key in ("models", "corpora"):
        value = getattr(args, key, None)
        if value:
            changes[key] = tuple(v.strip() for v in value.split(",") if v.strip())
    for f in fields(PipelineConfig):
        value = getattr(args, f.name, None)
        if f.name not in ("models", "corpora", "extra") and value is not None:
            changes[f.name] = value
    return replace(config, **changes)


def slug(text: str) -> str:
    """A folder name for a model or corpus spec.

    >>> slug("hf:wikitext/wikitext-2-raw-v1:train")
    'hf-wikitext-wikitext-2-raw-v1-train'
    """
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "x"


def short(label: str) -> str:
    """A legend label: a local path by its last part, anything else as it is.

    >>> short("/data/models/tiny-bert"), short("hf:imdb"), short("gpt2")
    ('tiny-bert', 'hf:imdb', 'gpt2')
    """
    return Path(label).name if "/" in label and ":" not in label else label


def run_one(
    config: PipelineConfig,
    model: str,
    corpus: str,
    *,
    client: Any = None,
    report: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    folder: Path | None = None,
) -> pd.DataFrame:
    """Extract (resumable), decompose and measure one model on one corpus.

    Writes ``hidden.zarr``, ``decomposition.zarr`` (and ``report/`` when asked) to ``folder``,
    by default ``OUT/MODEL/CORPUS`` (local paths by their last part); returns the per-layer measurements with ``model``,
    ``corpus``, ``layer`` and ``depth`` (layer / last layer, to put models of different depth
    side by side) columns.
    """
    folder = folder or Path(config.out) / slug(short(model)) / slug(short(corpus))
    folder.mkdir(parents=True, exist_ok=True)
    extract_config = posctx.ExtractConfig(
        corpus=posctx.CorpusConfig(spec=corpus, seed=config.seed),
        model=posctx.ModelConfig(
            name=model, batch_size=config.batch_size, device=config.device, dtype=config.dtype
        ),
        store=posctx.StoreConfig(
            contexts=config.contexts, length=config.length, storage_dtype=config.storage_dtype
        ),
    )
    hidden_path = str(folder / "hidden.zarr")
    result = posctx.extract(extract_config, hidden_path, progress=progress, client=client)
    echo(
        f"{model} on {corpus}: {result.blocks_written} blocks extracted "
        f"({result.blocks_already_done} already done)"
    )
    hidden = posctx.open_hidden(hidden_path)
    dec_path = str(folder / "decomposition.zarr")
    # moments=True: the hidden states' spectral norm (for the relative norm) comes from the
    # same single pass, so measuring needs no second read of the store.
    posctx.write_decomposition(
        posctx.decompose(hidden, positions=paper_positions(hidden), moments=True),
        dec_path,
        mode="w",
    )
    dec = posctx.open_decomposition(dec_path)
    params = posctx.GeometryParams(max_contexts=config.max_contexts, seed=config.seed)
    if report:
        metrics = posctx.write_report(
            dec, folder / "report", params=params, progress=progress
        ).metrics
        echo(f"report: {folder / 'report' / 'index.html'}")
    else:
        metrics = posctx.measure_geometry(dec, params=params, progress=progress)
    table = metrics_table(metrics).reset_index()
    last = max(int(table["layer"].max()), 1)
    table.insert(0, "corpus", corpus)
    table.insert(0, "model", model)
    table.insert(3, "depth", table["layer"] / last)
    return table


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    header = [str(c) for c in frame.columns]
    rows = [
        [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 columns of per-layer measurements, renamed for reading."""
    keep = ["model", "corpus", "layer", *TABLE1_COLUMNS]
    return frame[keep].rename(columns=TABLE1_COLUMNS)


def plot_layerwise(
    frame: pd.DataFrame,
    metrics: Sequence[str],
    out: Path,
    *,
    by: Sequence[str] = ("model", "corpus"),
    x: str = "depth",
) -> list[Path]:
    """One figure per measurement: a line per ``by`` group against ``x``; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
        for key, group in frame.groupby(list(by), sort=False):
            label = " / ".join(short(str(k)) for k in (key if isinstance(key, tuple) else (key,)))
            ax.plot(group[x], group[metric], marker="o", label=label)
        ax.set_xlabel("layer / last layer" if x == "depth" else x)
        ax.set_ylabel(TABLE1_COLUMNS.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        path = out / f"{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


__all__ = [
    "PipelineConfig",
    "TABLE1_COLUMNS",
    "add_config_arguments",
    "config_from_args",
    "markdown_table",
    "plot_layerwise",
    "run_one",
    "short",
    "slug",
    "table1",
]
