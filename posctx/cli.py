"""The ``posctx`` command line: argument parsing only; the work lives in library functions."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from posctx.cluster import dask_client
from posctx.config import AUTO, CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.errors import PosctxError


def _parse_layers(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated integers, e.g. 0,3,6") from None


def _parse_positions(value: str) -> slice | None:
    """``"1:"`` -> ``slice(1, None)``; ``"all"`` -> ``None`` (label slices, stop inclusive)."""
    if value == "all":
        return None
    try:
        start, _, stop = value.partition(":")
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use START:STOP (e.g. 1: or 0:64) or all") from None


def _storage_options(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


_storage_option = click.option(
    "--storage-option",
    "storage_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec option for URL stores (repeatable), e.g. endpoint_url=http://localhost:9000.",
)
_quiet = click.option("--quiet", is_flag=True, help="No progress bars.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="posctx")
def cli() -> None:
    """Decompose transformer hidden states into position and context effects, out of core."""


@cli.command()
@click.option(
    "--model",
    default="minilm",
    show_default=True,
    help="'minilm' (offline), a HF id, or a local folder.",
)
@click.option(
    "--corpus",
    default="stdlib",
    show_default=True,
    help="'stdlib', a path (file, folder, .jsonl/.csv/.parquet) or hf:NAME[/CONFIG][:SPLIT].",
)
@click.option("--contexts", default=512, show_default=True, help="Number of contexts C.")
@click.option(
    "--length",
    default=128,
    show_default=True,
    help="Tokens per context T, special tokens included.",
)
@click.option("--out", required=True, help="Output store: a path or fsspec URL (s3://...).")
@click.option(
    "--dtype",
    default="float32",
    show_default=True,
    type=click.Choice(["float32", "bfloat16", "float16"]),
    help="Compute dtype of the forward pass.",
)
@click.option(
    "--storage-dtype",
    default="float32",
    show_default=True,
    type=click.Choice(["float32", "float16"]),
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--layers",
    default=None,
    help="Comma-separated hidden-state indices (0 = embeddings); default all.",
)
@click.option(
    "--special-tokens",
    default="model",
    show_default=True,
    type=click.Choice(["model", "none"]),
    help="'model': the tokenizer's own framing ([CLS]..[SEP], BOS); 'none': raw text tokens.",
)
@click.option(
    "--final-norm",
    default="after",
    show_default=True,
    type=click.Choice(["after", "before"]),
    help="A decoder's last hidden state: after its final norm (as transformers returns it, "
    "named block_L+final_norm) or before it (the last block's residual stream; recorded).",
)
@click.option(
    "--attn-implementation",
    default=None,
    help="eager, sdpa, ... (default: transformers' choice; recorded).",
)
@click.option(
    "--batch-size",
    default="32",
    show_default=True,
    help="Contexts per forward pass, or 'auto': the largest power of two that fits in the "
    "device's free memory (fixed when the store is created).",
)
@click.option(
    "--writer-threads",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Threads writing finished blocks while the forward passes go on (0: 4, or fewer CPUs).",
)
@click.option(
    "--chunk-contexts",
    default=0,
    show_default=True,
    help="Contexts per chunk (0: about 64 MB chunks).",
)
@click.option(
    "--chunk-layers",
    default=0,
    show_default=True,
    help="Layers per chunk (0: all, unless a context of all layers exceeds 128 MB).",
)
@click.option(
    "--statistics/--no-statistics",
    default=True,
    show_default=True,
    help="Also keep the decomposition's statistics, so that decomposing reads no hidden state.",
)
@click.option(
    "--moments",
    is_flag=True,
    help="With the statistics, also accumulate dim x dim second moments (the spectra).",
)
@click.option(
    "--hidden-contexts",
    default=None,
    type=click.IntRange(min=0),
    metavar="N",
    help="Store the hidden states of the first N contexts only (0: none); statistics cover all.",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--balance/--no-balance",
    default=True,
    show_default=True,
    help="Same number of contexts per topic.",
)
@click.option(
    "--windows",
    default="stream",
    show_default=True,
    type=click.Choice(["stream", "documents"]),
    help="'stream': contexts anywhere in each topic's text; 'documents': each context is the "
    "start of one document (positions then mean the same in every context).",
)
@click.option("--text-column", default="text", show_default=True)
@click.option("--topic-column", default="topic", show_default=True)
@_storage_option
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run blocks on this dask.distributed scheduler (tcp://host:8786).",
)
@click.option(
    "--workers",
    default=0,
    show_default=True,
    help="Start a local cluster of N worker processes and run blocks there.",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Compute only forward groups I, I+N, I+2N... (a group is one block unless a chunk holds fewer contexts than a batch): run N such processes (one per GPU, a Slurm array...) on the same --out at once.",
)
@click.option(
    "--plan-only",
    is_flag=True,
    help="Create or extend the store (token ids, labels) and compute nothing: run once before starting shards.",
)
@_quiet
def extract(**kw: Any) -> None:
    """Extract hidden states of every layer into a labelled Zarr store (resumable)."""
    from posctx.extraction import extract as run

    config = ExtractConfig(
        corpus=CorpusConfig(
            spec=kw["corpus"],
            text_column=kw["text_column"],
            topic_column=kw["topic_column"] or None,
            seed=kw["seed"],
            balance=kw["balance"],
            windows=kw["windows"],
        ),
        model=ModelConfig(
            name=kw["model"],
            dtype=kw["dtype"],
            device=kw["device"],
            layers=_parse_layers(kw["layers"]),
            special_tokens=kw["special_tokens"],
            attn_implementation=kw["attn_implementation"],
            final_norm=kw["final_norm"],
            batch_size=_parse_batch_size(kw["batch_size"]),
        ),
        store=StoreConfig(
            contexts=kw["contexts"],
            length=kw["length"],
            storage_dtype=kw["storage_dtype"],
            chunk_contexts=kw["chunk_contexts"],
            chunk_layers=kw["chunk_layers"],
            statistics=kw["statistics"],
            moments=kw["moments"],
            hidden_contexts=kw["hidden_contexts"],
        ),
    )
    if kw["scheduler"] and kw["workers"]:
        raise click.BadParameter("give --scheduler or --workers, not both")
    source = click.get_current_context().get_parameter_source("topic_column")
    with dask_client(kw["scheduler"], kw["workers"]) as client:
        result = run(
            config,
            kw["out"],
            storage_options=_storage_options(kw["storage_option"]),
            progress=not kw["quiet"],
            client=client,
            shard=_parse_shard(kw["shard"]),
            plan_only=kw["plan_only"],
            require_topic_column=source is click.core.ParameterSource.COMMANDLINE,
            writer_threads=kw["writer_threads"] or None,
        )
    verb = "resumed" if result.resumed else "created"
    if result.plan_only:
        click.echo(
            f"planned {result.path} ({verb}): {result.blocks_already_done} of "
            f"{result.n_blocks} blocks already written, {result.blocks_missing} to write; "
            "nothing computed (--plan-only): run the same command without --plan-only to "
            "extract them"
        )
        return
    click.echo(
        f"{verb} {result.path}: {result.blocks_written} blocks written, "
        f"{result.blocks_already_done} already done, {result.tokens_written:,} tokens in "
        f"{result.seconds:.1f} s ({result.tokens_per_second:,.0f} tokens/s)"
    )
    if result.blocks_missing:
        click.echo(f"{result.blocks_missing} blocks are not written yet")


def _parse_batch_size(value: str) -> int | str:
    """``--batch-size``: a number, or ``auto``."""
    if value.strip().lower() == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give a number of contexts per forward pass, e.g. 32, or auto"
        ) from None


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, sep, count = value.partition("/")
    if not (sep and index.isdigit() and count.isdigit()):
        raise click.BadParameter(f"{value!r}: use I/N, e.g. 0/4 for the first of four processes")
    return int(index), int(count)


@cli.command()
@click.argument("store")
@click.option("--out", required=True, help="Output decomposition store (path or URL).")
@click.option(
    "--positions",
    default="auto",
    show_default=True,
    help="Position labels to use: START:STOP (stop included), 'all', or 'auto': drop position 0 ([CLS]/BOS, as the paper does) and a trailing [SEP].",
)
@click.option(
    "--contexts",
    default="all",
    show_default=True,
    help="Context labels to use, START:STOP or 'all'.",
)
@click.option("--topic", default=None, help="Use only the contexts of this topic.")
@click.option(
    "--moments",
    is_flag=True,
    help="Also accumulate dim x dim second moments: spectra of hidden states and residual.",
)
@click.option(
    "--runs",
    default=None,
    type=click.IntRange(min=1),
    help="Also keep per-cell sums (runs of consecutive contexts, split by topic; at most this many runs) for the report's intervals of every measurement. Reads the hidden states.",
)
@click.option(
    "--from",
    "previous",
    default=None,
    metavar="DECOMPOSITION",
    help="Reuse this decomposition's sums and read only the contexts it lacks.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing decomposition at --out.")
@click.option(
    "--complete-only",
    is_flag=True,
    help="Use only the finished blocks of an interrupted store (recorded in the output) instead of refusing it.",
)
@_storage_option
def decompose(
    store: str,
    out: str,
    positions: str,
    contexts: str,
    topic: str | None,
    moments: bool,
    runs: int | None,
    previous: str | None,
    overwrite: bool,
    complete_only: bool,
    storage_option: tuple[str, ...],
) -> None:
    """Compute mu, pos, ctx and the sums of squares in one pass and write them to Zarr."""
    from posctx.decomposition.stores import AUTO, decompose_store
    from posctx.summary import format_variance_table, variance_shares

    result = decompose_store(
        store,
        out,
        positions=AUTO if positions == AUTO else _parse_positions(positions),
        contexts=_parse_positions(contexts),
        topic=topic,
        moments=moments,
        runs=runs,
        previous=previous,
        mode="w" if overwrite else "w-",
        complete_only=complete_only,
        storage_options=_storage_options(storage_option),
    )
    if result.source == "statistics":
        click.echo("decomposed from the statistics kept during extraction: no hidden state read")
    elif result.previous is not None:
        click.echo(
            f"{result.contexts_read} new contexts read; the rest came from {result.previous}"
        )
    if result.source_reason:
        click.echo(f"read the {result.source}: {result.source_reason}")
    click.echo(format_variance_table(variance_shares(result.decomposition)))
    click.echo(f"wrote {out} in {result.seconds:.1f} s")


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@_storage_option
def info(store: str, as_json: bool, storage_option: tuple[str, ...]) -> None:
    """Show a store's schema, size on disk, completeness, statistics and provenance."""
    from posctx.store import store_info
    from posctx.summary import format_store_info

    record = store_info(store, _storage_options(storage_option))
    click.echo(json.dumps(record, indent=2) if as_json else format_store_info(record))


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--no-scan",
    is_flag=True,
    help="Skip the scans that read the whole store: NaN/inf in the hidden states, and the statistics' values.",
)
@click.option(
    "--rerun",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="N",
    help="Recompute N random contexts with the recorded model and compare them with the stored values.",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seeds the choice of contexts for --rerun."
)
@click.option(
    "--clean-partial",
    is_flag=True,
    help="Delete .partial chunk files left by a killed writer (local stores; only while no extraction runs).",
)
@_storage_option
@_quiet
def validate(
    store: str,
    as_json: bool,
    no_scan: bool,
    rerun: int,
    seed: int,
    clean_partial: bool,
    storage_option: tuple[str, ...],
    quiet: bool,
) -> None:
    """Check a store's schema, labels, provenance, completeness and values (exit 1 on failure)."""
    from posctx.validate import validate_store

    report = validate_store(
        store,
        storage_options=_storage_options(storage_option),
        scan=not no_scan,
        rerun=rerun,
        seed=seed,
        progress=not quiet and not as_json,
        clean_partial=clean_partial,
    )
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if not report.ok:
        sys.exit(1)  # not ctx.exit: main() runs click with standalone_mode=False, which drops it


@cli.command()
@click.argument("decomposition")
@click.option(
    "--out", required=True, help="Folder for index.html, metrics.json, metrics.csv and figures/."
)
@click.option(
    "--hidden",
    default=None,
    help="The hidden-state store the decomposition was made from: adds the relative norm and the residual spectrum (one read of the store).",
)
@click.option(
    "--max-contexts",
    default=2048,
    show_default=True,
    type=click.IntRange(min=1),
    help="Contexts sampled for pairwise measures.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Seeds the context sample, k-means, random baselines and bootstrap resamples.",
)
@click.option(
    "--level",
    default=0.95,
    show_default=True,
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    help="Coverage of the bootstrap intervals.",
)
@click.option(
    "--resamples",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bootstrap resamples (0: no intervals). About 0.1 s per resample and layer at C=512, T=128, d=384.",
)
@click.option(
    "--convergence/--no-convergence",
    default=True,
    show_default=True,
    help="Measure on 1, 2, 4, ... runs of contexts: how many contexts each measurement needs.",
)
@click.option(
    "--static",
    is_flag=True,
    help="Also write the figures as PNG, SVG and PDF and the page of PNGs, static.html.",
)
@_storage_option
@_quiet
def report(
    decomposition: str,
    out: str,
    hidden: str | None,
    max_contexts: int,
    seed: int,
    level: float,
    resamples: int,
    convergence: bool,
    static: bool,
    storage_option: tuple[str, ...],
    quiet: bool,
) -> None:
    """Measure the geometry of position and context and write an HTML report."""
    from posctx.geometry import GeometryParams
    from posctx.geometry.uncertainty import IntervalParams
    from posctx.report import format_metrics_table, report_stores

    result = report_stores(
        decomposition,
        out,
        hidden=hidden,
        params=GeometryParams(max_contexts=max_contexts, seed=seed),
        intervals=IntervalParams(
            level=level, resamples=resamples, convergence=convergence, seed=seed
        )
        if resamples
        else None,
        static=static,
        progress=not quiet,
        storage_options=_storage_options(storage_option),
    )
    click.echo(format_metrics_table(result.metrics, result.uncertainty))
    click.echo(f"wrote {result.index} in {result.seconds:.1f} s")


@cli.command()
@click.argument("hidden")
@click.argument("decomposition")
@click.option(
    "--layer",
    "layers",
    required=True,
    help="Hidden-state index whose transformer block's attention to dissect (0 = the first, reading the embeddings); comma-separated for several.",
)
@click.option("--out", required=True, help="Folder for the figures (PNG) and toeplitz.json/.csv.")
@click.option(
    "--contexts",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Dissect the decomposition's first N contexts.",
)
@click.option("--heads", default=None, help="Comma-separated head indices (default: all).")
@click.option(
    "--device",
    default=None,
    help="Run the model here instead of the recorded device (cpu, cuda, cuda:N).",
)
@_storage_option
def attention(
    hidden: str,
    decomposition: str,
    layers: str,
    out: str,
    contexts: int,
    heads: str | None,
    device: str | None,
    storage_option: tuple[str, ...],
) -> None:
    """Split each head's attention scores into pos-pos, pos-ctx, ctx-pos and ctx-ctx parts."""
    from posctx.attention import format_toeplitz_table, write_attention_dissection

    result = write_attention_dissection(
        hidden,
        decomposition,
        _parse_layers(layers),
        out,
        contexts=contexts,
        heads=_parse_layers(heads) or None,
        device=device,
        storage_options=_storage_options(storage_option),
    )
    for shares in result.shares:
        click.echo(format_toeplitz_table(shares))
    click.echo(
        f"wrote {len(result.figures)} figures, {result.json.name} and {result.csv.name} to {out} in {result.seconds:.1f} s"
    )


@cli.command()
@click.option(
    "--out",
    default="posctx-demo",
    show_default=True,
    help="Folder for hidden.zarr, decomposition.zarr and report/.",
)
@click.option("--contexts", default=512, show_default=True)
@click.option("--length", default=128, show_default=True)
@_quiet
def demo(out: str, contexts: int, length: int, quiet: bool) -> None:
    """Run extract -> decompose -> report on MiniLM and the built-in stdlib corpus, offline."""
    from posctx.demo import run_demo

    run_demo(Path(out), contexts=contexts, length=length, progress=not quiet, echo=click.echo)


def run_cli(command: click.Command, args: Sequence[str] | None = None) -> Any:
    """Run a click command with posctx's conventions, and return what its callback returned.

    A user error (:class:`~posctx.errors.PosctxError`) becomes one line on stderr, ``error:
    ...``, and exit status 2, as does a usage error; an interrupt says how to resume and
    exits 130. The ``posctx`` command and the pipelines (``python -m pipelines.table1``...)
    all run through here.
    """
    try:
        return command.main(args=args, standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted: re-run the same command to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PosctxError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    run_cli(cli)


__all__ = ["cli", "main", "run_cli"]
