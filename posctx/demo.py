"""The offline demo: MiniLM on the built-in stdlib corpus, extract -> decompose -> report."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig

#: Runs of contexts the demo's decomposition keeps sums of, and its bootstrap resamples
#: (fewer than the report's default 200: the demo stays near a minute on two cores).
DEMO_RUNS = 32
DEMO_RESAMPLES = 100


def run_demo(
    out: Path,
    *,
    contexts: int = 512,
    length: int = 128,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the whole job offline and print per-layer tables of variance shares and geometry.

    Writes ``out/hidden.zarr`` (resumed if it is there from an interrupted demo),
    ``out/decomposition.zarr`` (replaced on every run) and the report ``out/report/``
    (:func:`posctx.write_report`). Returns timings in seconds.
    """
    from posctx.decomposition.stores import decompose_store
    from posctx.extraction import extract
    from posctx.geometry.uncertainty import IntervalParams
    from posctx.report import example_tokens, format_metrics_table, write_report
    from posctx.store import store_info
    from posctx.summary import format_variance_table, variance_shares

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    config = ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name="minilm"),
        store=StoreConfig(contexts=contexts, length=length),
    )
    hidden_path = str(out / "hidden.zarr")
    result = extract(config, hidden_path, progress=progress)
    echo(
        f"extract: {result.tokens_written:,} tokens in {result.seconds:.1f} s "
        f"({result.tokens_per_second:,.0f} tokens/s), "
        f"{result.blocks_already_done} blocks already done"
    )
    t1 = time.perf_counter()
    # Derived data: always recomputed from the hidden store (mode "w" replaces the old one).
    # moments=True: the spectra of hidden states and residual come from the same single pass,
    # so the report needs no second read of the hidden states.
    # runs: per-cell sums for the report's bootstrap intervals, from the same pass.
    dec = decompose_store(
        hidden_path, out / "decomposition.zarr", moments=True, runs=DEMO_RUNS, mode="w"
    )
    t2 = time.perf_counter()
    info = store_info(hidden_path)
    echo(f"decompose: {t2 - t1:.1f} s -> {dec.path}")
    echo("variance shares (positions 1..T-2: [CLS] and [SEP] dropped):")
    echo(format_variance_table(variance_shares(dec.decomposition)))
    echo(
        f"store {hidden_path}: {info['size_on_disk'] / 1e6:,.0f} MB on disk, "
        f"{info['blocks_complete']}/{info['blocks_total']} blocks"
    )
    report = write_report(
        dec.decomposition,
        out / "report",
        intervals=IntervalParams(resamples=DEMO_RESAMPLES),
        tokens=example_tokens(hidden_path, dec.decomposition),
        progress=progress,
    )
    t3 = time.perf_counter()
    echo("geometry (see docs/geometry.md):")
    echo(format_metrics_table(report.metrics, report.uncertainty))
    echo(f"report: {report.seconds:.1f} s -> {report.index}; total {t3 - t0:.1f} s")
    return {"extract": result.seconds, "decompose": t2 - t1, "report": t3 - t2, "total": t3 - t0}


__all__ = ["DEMO_RESAMPLES", "DEMO_RUNS", "run_demo"]
