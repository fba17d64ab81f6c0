"""Small human-readable summaries of stores and decompositions (used by the CLI and demo)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posctx.types import LAYER, LAYER_NAME

#: The parts whose shares of the total sum of squares are reported.
SHARE_PARTS = ("pos", "ctx", "resid")


def variance_shares(dec: Any) -> list[dict[str, Any]]:
    """Per-layer shares of ``ss_total`` carried by pos, ctx and resid.

    Reads the four per-layer ``ss_*`` vectors in one ``dask.compute``: from a stored
    decomposition that is a few bytes; a lazy one (:func:`posctx.decompose`) is computed
    once, whole.

    Examples
    --------
    >>> import posctx
    >>> from posctx.testing import planted_hidden, raise_if_dask_computes
    >>> ds, _ = planted_hidden(8, 5, 2, 3)
    >>> with raise_if_dask_computes(max_computes=1):
    ...     rows = variance_shares(posctx.decompose(ds))
    >>> [row["name"] for row in rows], round(sum(rows[0][k] for k in ("pos", "ctx", "resid")), 9)
    (['embeddings', 'block_1'], 1.0)
    """
    from dask.base import compute

    names = ("ss_total", "ss_pos", "ss_ctx", "ss_resid")
    total, *parts = (
        np.asarray(v, dtype=float) for v in compute(*(dec[name].data for name in names))
    )
    labels = dec[LAYER_NAME].values if LAYER_NAME in dec.coords else dec[LAYER].values
    return [
        {
            LAYER: int(layer),
            "name": str(labels[i]),
            **{
                part: float(value[i] / total[i])
                for part, value in zip(SHARE_PARTS, parts, strict=True)
            },
        }
        for i, layer in enumerate(dec[LAYER].values)
    ]


def format_variance_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`variance_shares` as a fixed-width text table."""
    lines = [f"{'layer':>5}  {'name':<12} {'pos':>7} {'ctx':>7} {'resid':>7}"]
    for r in rows:
        lines.append(
            f"{r['layer']:>5}  {r['name']:<12} {r['pos']:>7.3f} {r['ctx']:>7.3f} {r['resid']:>7.3f}"
        )
    return "\n".join(lines)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def format_store_info(info: Mapping[str, Any]) -> str:
    """Render :func:`posctx.store.store_info` for a terminal."""
    prov = info["provenance"]
    cfg = prov.get("config", {})
    model = prov.get("model", {})
    special = prov.get("special_tokens", {})
    lines = [f"store      {info['path']}"]
    for name, arr in info["arrays"].items():
        dims = ", ".join(f"{d}={s}" for d, s in zip(arr["dims"], arr["shape"], strict=False))
        lines.append(
            f"{name:<10} ({dims}) {arr['dtype']} chunks={tuple(arr['chunks'])} "
            f"[{_human_bytes(arr['uncompressed_bytes'])} uncompressed]"
        )
    state = "complete" if info["complete"] else "INCOMPLETE: re-run the extract command to resume"
    size = f"size       {_human_bytes(info['size_on_disk'])} on disk"
    if "size_on_disk_hidden" in info:  # records of posctx 0.2 on
        size += (
            f": hidden states {_human_bytes(info['size_on_disk_hidden'])}, statistics "
            f"{_human_bytes(info.get('size_on_disk_statistics', 0))}"
        )
    lines += [
        size,
        f"blocks     {info['blocks_complete']}/{info['blocks_total']} written ({state})",
        *_statistics_lines(info),
        f"model      {model.get('hf_id')} ({model.get('architecture')}, weights "
        f"{str(model.get('weights_hash'))[:12]}, dtype {model.get('dtype')}, "
        f"attention {model.get('attn_implementation')}, batch {model.get('batch_size')}, "
        f"device {model.get('device')})",
        f"tokens     special-token policy {special.get('policy')!r}: prefix "
        f"{special.get('prefix_tokens')} suffix {special.get('suffix_tokens')}",
        f"corpus     {cfg.get('corpus', {}).get('spec')} seed={cfg.get('corpus', {}).get('seed')} "
        f"balance={cfg.get('corpus', {}).get('balance')}",
        f"created    {prov.get('created')} by posctx {prov.get('posctx_version')}",
    ]
    return "\n".join(lines)


def _statistics_lines(info: Mapping[str, Any]) -> list[str]:
    """The lines of :func:`format_store_info` on the statistics and the hidden states kept."""
    if "statistics" not in info:  # a record from before posctx 0.2
        return []
    stats = info["statistics"]
    if stats is None:
        return [
            "statistics none (made before posctx 0.2, or with --no-statistics): decompositions "
            "read the hidden states"
        ]
    lines = [
        f"statistics kept: {len(stats['topics'])} topics, edges {stats['edges']}, "
        f"{'with' if stats['moments'] else 'no'} moments; {stats['blocks_counted']}/"
        f"{info['blocks_total']} blocks counted by {stats['partials']} "
        f"partial{'' if stats['partials'] == 1 else 's'}"
    ]
    total = info["arrays"]["hidden"]["shape"][0]
    stored = info.get("hidden_contexts_stored", total)
    if stored < total:
        lines.append(
            f"hidden     states of {stored} of {total} contexts (--hidden-contexts {stored}); "
            f"statistics of all {total}"
        )
    return lines


__all__ = ["format_store_info", "format_variance_table", "variance_shares"]
