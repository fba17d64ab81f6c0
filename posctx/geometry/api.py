"""Thin xarray layer of the geometry measurements: a decomposition in, labelled results out.

Two steps, each of which computes, by design:

* :func:`collect_inputs` computes, in one dask pass, everything the measurements and figures
  read: pos, mu and the sums of squares, a seeded sample of ctx, the second moment of ctx
  over all contexts and, given the hidden-state store, the second moment of the hidden
  states (for the relative norm and the residual spectrum);
* :func:`measure_geometry` runs the numpy kernels of :mod:`posctx.geometry.kernels` layer by
  layer on those inputs and returns a labelled :class:`xarray.Dataset` of measurements.

:func:`metrics_table` and :func:`metrics_to_dict` export the measurements for CSV and JSON.
Nothing here computes on lazy inputs except those two documented steps.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr

from posctx.decomposition.api import dask_data, label_indexer, refuse_partial_sample
from posctx.errors import PosctxError
from posctx.geometry import kernels
from posctx.geometry.graph import cell_totals, gram_array
from posctx.geometry.kernels import GeometryParams
from posctx.geometry.serialise import (
    geometry_record,
    inputs_record,
    metrics_table,
    metrics_to_dict,
    provenance,
)
from posctx.progress import dask_progress
from posctx.types import (
    ANGLE,
    CELL,
    COMPONENT,
    CONTEXT,
    CONTEXT_CELL,
    DIM,
    DIM2,
    GEOMETRY_ATTR,
    HIDDEN,
    HIDDEN_DIMS,
    INPUTS_ATTR,
    LAYER,
    LAYER_NAME,
    POSITION,
    PROVENANCE_ATTR,
    TOPIC,
)

if TYPE_CHECKING:
    pass


#: Variables of a decomposition the geometry reads; any others are ignored.
REQUIRED = ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid")

#: The per-layer measurements: name -> (dims, one-line meaning) (docs/geometry.md has more).
METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "pos_sv": ((LAYER, COMPONENT), "singular values of pos (T x d), zero-padded to d"),
    "ctx_sv": ((LAYER, COMPONENT), "singular values of ctx (C x d, all contexts)"),
    "resid_sv": (
        (LAYER, COMPONENT),
        "singular values of resid (CT x d); NaN without the hidden store",
    ),
    "pos_norm": ((LAYER,), "spectral norm of pos (T x d)"),
    "pos_stable_rank": ((LAYER,), "sum s^2 / s_1^2 of pos"),
    "pos_screenot_rank": ((LAYER,), "rank kept by the ScreeNOT optimal hard threshold"),
    "pos_screenot_threshold": ((LAYER,), "the ScreeNOT threshold on pos singular values"),
    "pos_screenot_share": ((LAYER,), "share of sum s kept by the ScreeNOT rank"),
    "pos_rank90": ((LAYER,), "components for 90% of sum s^2"),
    "pos_rank99": ((LAYER,), "components for 99% of sum s^2"),
    "hidden_norm": (
        (LAYER,),
        "spectral norm of the CT x d hidden states (with mu); NaN if unknown",
    ),
    "relative_norm": ((LAYER,), "sqrt(C) |pos|_2 / |H|_2 (the paper's); NaN if |H|_2 unknown"),
    "share_pos": ((LAYER,), "ss_pos / ss_total"),
    "share_ctx": ((LAYER,), "ss_ctx / ss_total"),
    "share_resid": ((LAYER,), "ss_resid / ss_total"),
    "smooth_low_share": (
        (LAYER,),
        "share of the DCT energy of the pos Gram in the lowest k x k frequencies",
    ),
    "smooth_low_share_shuffled": ((LAYER,), "the same with positions randomly permuted"),
    "spiral_pc_share": ((LAYER,), "share of pos energy in its top 3 principal components"),
    "spiral_step_cos": ((LAYER,), "mean cosine of consecutive steps of the top-3 PC curve"),
    "spiral_roughness": ((LAYER,), "mean squared step / (2 x mean squared spread) of that curve"),
    "spiral_turns": ((LAYER,), "accumulated angle of the top-2 PC curve, in turns"),
    "ctx_within": ((LAYER,), "mean |cos| of ctx pairs of the same topic"),
    "ctx_between": ((LAYER,), "mean |cos| of ctx pairs of different topics"),
    "ctx_within_pc": ((LAYER,), "ctx_within after projecting ctx on its top PCs"),
    "ctx_between_pc": ((LAYER,), "ctx_between after projecting ctx on its top PCs"),
    "ctx_ari": ((LAYER,), "adjusted Rand index of k-means (k = topics) vs topics"),
    "ctx_nmi": ((LAYER,), "normalised mutual information of k-means vs topics"),
    "ctx_silhouette": ((LAYER,), "silhouette of the topic labels, cosine distance"),
    "orth_max_cos": ((LAYER,), "max |cos| between a pos and a ctx vector"),
    "orth_mean_cos": ((LAYER,), "mean |cos| between pos and ctx vectors"),
    "orth_max_cos_random": ((LAYER,), "orth_max_cos with the pos set randomly rotated"),
    "orth_mean_cos_random": ((LAYER,), "orth_mean_cos with the pos set randomly rotated"),
    "orth_principal_cos": (
        (LAYER, ANGLE),
        "cosines of principal angles, top-k pos vs ctx subspaces",
    ),
    "orth_principal_cos_random": (
        (LAYER, ANGLE),
        "the same for a random rotation of the pos subspace",
    ),
    "orth_top_principal_cos": ((LAYER,), "largest principal cosine (smallest angle)"),
    "orth_top_principal_cos_random": ((LAYER,), "the same for random subspaces of the same dims"),
}


#: Measurements that are counts, stored as int64.
INTEGER_METRICS = ("pos_screenot_rank", "pos_rank90", "pos_rank99")


def _check_decomposition(dec: xr.Dataset) -> None:
    missing = [name for name in REQUIRED if name not in dec.data_vars]
    if missing:
        raise PosctxError(
            f"not a decomposition: missing {missing}; make one with posctx.decompose or "
            "open one with posctx.open_decomposition"
        )


def _hidden_gram(hidden: xr.Dataset, dec: xr.Dataset) -> xr.DataArray:
    """Lazy ``H^T H`` per layer over exactly the contexts and positions of ``dec``."""
    if HIDDEN not in hidden.data_vars:
        raise PosctxError(
            f"hidden has no {HIDDEN!r} variable: pass the hidden-state store "
            "(posctx.open_hidden) the decomposition was made from"
        )
    ours, theirs = dec.attrs.get(PROVENANCE_ATTR), hidden.attrs.get(PROVENANCE_ATTR)
    if (
        ours is not None
        and theirs is not None
        and json.dumps(ours, sort_keys=True, default=str)
        != json.dumps(theirs, sort_keys=True, default=str)
    ):
        raise PosctxError(
            "the hidden-state store's provenance differs from the decomposition's: pass the "
            "store the decomposition was made from"
        )
    refuse_partial_sample(hidden, dec, "the relative norm and the residual spectrum")
    h = hidden[HIDDEN].transpose(*HIDDEN_DIMS)
    h = h.isel(
        {d: label_indexer(h.indexes[d], dec.indexes[d], d) for d in (CONTEXT, POSITION, LAYER)}
    )
    if h.sizes[DIM] != dec.sizes[DIM]:
        raise PosctxError(f"hidden has {h.sizes[DIM]} dims, the decomposition {dec.sizes[DIM]}")
    zeros = da.zeros((h.sizes[LAYER], h.sizes[DIM]), chunks=-1)
    gram = gram_array(dask_data(h), zeros)
    return xr.DataArray(gram, dims=(LAYER, DIM, DIM2))


def _cell_inputs(dec: xr.Dataset, ctx: xr.DataArray) -> xr.Dataset:
    """Lazy per-cell sums the bootstrap reads (:mod:`posctx.geometry.kernels.bootstrap`):
    position sums, sums of squares, and ``sum |ctx_c|^2`` over each cell's contexts."""
    sqnorm = dask_data((ctx**2).sum(DIM)).rechunk({1: -1})
    # The cell of each context may still be lazy (opened from Zarr): summed chunk by chunk.
    cells = dask_data(dec[CONTEXT_CELL]).rechunk((sqnorm.chunks[0],))
    by_cell = cell_totals(sqnorm, cells, dec.sizes[CELL])
    return xr.Dataset(
        {
            "cell_pos_sum": dec["cell_pos_sum"].transpose(CELL, POSITION, LAYER, DIM),
            "cell_sumsq": dec["cell_sumsq"].transpose(CELL, LAYER),
            "cell_ctx_sqnorm": ((CELL, LAYER), by_cell),
        }
    )


def collect_inputs(
    dec: xr.Dataset,
    *,
    hidden: xr.Dataset | None = None,
    params: GeometryParams | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Compute, in one dask pass, everything the measurements and figures read.

    This function's job is to compute: it calls ``dask.compute`` exactly once, on lazy
    ``dec`` and ``hidden`` alike. A decomposition straight from :func:`posctx.decompose`
    is then computed in that same pass; one opened from Zarr is read, not recomputed.

    Parameters
    ----------
    dec
        A decomposition (:func:`posctx.decompose` or :func:`posctx.open_decomposition`).
        Variables other than ``mu``, ``pos``, ``ctx`` and ``ss_*`` are ignored.
    hidden
        Optional: the hidden-state store ``dec`` was made from (:func:`posctx.open_hidden`).
        With it, ``hidden_gram`` = ``H^T H`` is accumulated over the chunks of the selected
        hidden states (one read of each chunk, float64 sums); it gives the spectral norm of
        the hidden states (the relative norm's denominator) and the residual spectrum. Not
        needed when ``dec`` was made with ``moments=True``: ``H^T H`` then follows from its
        ``m2_hidden`` and ``mu`` with no further read.
    params
        Only ``max_contexts`` and ``seed`` are used here (the ctx sample).
    progress
        Show a tqdm bar for the dask pass.

    Returns
    -------
    xarray.Dataset
        In memory: ``mu``, ``pos``, ``ss_*`` as in ``dec``; ``ctx`` of at most
        ``params.max_contexts`` contexts (seeded uniform sample, in order, with their
        ``topic`` labels); ``ctx_gram`` (layer, dim, dim2) = ``X^T X`` over all contexts;
        ``hidden_gram`` (layer, dim, dim2) when ``hidden`` is given. attrs: those of ``dec``
        plus ``posctx_geometry_inputs``, a JSON record with ``n_contexts`` and
        ``n_positions`` of the decomposition.

    Raises
    ------
    PosctxError
        If ``dec`` lacks a variable, or ``hidden`` is not the store ``dec`` was made from.

    Examples
    --------
    >>> import posctx
    >>> from posctx.testing import planted_hidden, raise_if_dask_computes
    >>> ds, _ = planted_hidden(40, 10, 2, 6)
    >>> dec = posctx.decompose(ds, positions=slice(1, None))
    >>> with raise_if_dask_computes(max_computes=1):
    ...     inputs = collect_inputs(dec, hidden=ds, params=GeometryParams(max_contexts=25))
    >>> inputs.sizes["context"], inputs.hidden_gram.dims
    (25, ('layer', 'dim', 'dim2'))
    """
    _check_decomposition(dec)
    params = params or GeometryParams()
    n_contexts, n_positions = dec.sizes[CONTEXT], dec.sizes[POSITION]
    sample = kernels.sample_indices(n_contexts, params.max_contexts, params.seed)
    zeros = da.zeros((dec.sizes[LAYER], dec.sizes[DIM]), chunks=-1)
    ctx = dec["ctx"].transpose(CONTEXT, LAYER, DIM)
    lazy = xr.Dataset(
        {
            "mu": dec["mu"].transpose(LAYER, DIM),
            "pos": dec["pos"].transpose(POSITION, LAYER, DIM),
            # A slice when every context is kept: a plain view of whole chunks, no gather.
            "ctx": ctx.isel({CONTEXT: slice(None) if sample.size == n_contexts else sample}),
            "ctx_gram": ((LAYER, DIM, DIM2), gram_array(dask_data(ctx), zeros)),
            **{name: dec[name] for name in REQUIRED if name.startswith("ss_")},
        }
    )
    if "cell_pos_sum" in dec:
        lazy = lazy.merge(_cell_inputs(dec, ctx))
    if hidden is not None:
        lazy["hidden_gram"] = _hidden_gram(hidden, dec)
    elif "m2_hidden" in dec:
        # A decomposition made with moments=True already holds sum (h - mu)(h - mu)^T; adding
        # N mu mu^T gives H^T H without reading the hidden states again.
        mu = dec["mu"].transpose(LAYER, DIM)
        outer = mu * mu.rename({DIM: DIM2}).drop_vars(DIM2, errors="ignore")
        m2 = dec["m2_hidden"].drop_vars([DIM2], errors="ignore")
        lazy["hidden_gram"] = (m2 + n_contexts * n_positions * outer).transpose(LAYER, DIM, DIM2)
    lazy = lazy.assign_coords({DIM2: dec[DIM].values})
    with dask_progress(progress, "geometry: reading"):
        # Dataset.compute is one dask.compute; dask.compute(dataset) itself loses tasks that
        # variables share (dask 2026.8, xarray 2026.9: "Missing dependency"; compare
        # pydata/xarray#11329).
        computed = lazy.compute()
    attrs = dict(dec.attrs)
    attrs[INPUTS_ATTR] = json.dumps(
        {
            "n_contexts": int(n_contexts),
            "n_positions": int(n_positions),
            "n_sampled_contexts": int(sample.size),
            "hidden_gram": hidden is not None or "m2_hidden" in dec,
            "params": json.loads(params.to_json()),
        },
        sort_keys=True,
    )
    computed.attrs = attrs
    return computed


def _spectral_norm_given(
    value: xr.DataArray | Sequence[float] | npt.ArrayLike, layers: xr.DataArray
) -> npt.NDArray[np.float64]:
    if isinstance(value, xr.DataArray):
        if LAYER not in value.dims:
            raise PosctxError("hidden_spectral_norm must have a 'layer' dim")
        return np.asarray(value.sel({LAYER: layers.values}).values, dtype=np.float64)
    out = np.asarray(value, dtype=np.float64)
    if out.shape != (layers.size,):
        raise PosctxError(
            f"hidden_spectral_norm needs one value per layer ({layers.size}), got shape {out.shape}"
        )
    return out


def measure_geometry(
    dec: xr.Dataset,
    *,
    hidden: xr.Dataset | None = None,
    hidden_spectral_norm: xr.DataArray | Sequence[float] | None = None,
    params: GeometryParams | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Measure the geometry of position and context at every layer (computes; see below).

    The measurements of Song & Zhong (2023), per layer: pos is low-rank (singular values,
    stable rank, ScreeNOT rank and its share, components for 90/99% of the energy), its
    relative norm and the variance shares; pos is smooth (DCT low-frequency share of its
    Gram matrix vs positions shuffled); pos traces a curve (smoothness and winding of its top
    principal components); ctx clusters by topic (within vs between mean ``|cos|``, also in
    its top PCs; k-means ARI/NMI; silhouette); pos and ctx are nearly orthogonal (max and
    mean ``|cos|``, principal angles, each vs random rotations). ``docs/geometry.md`` gives
    every formula.

    This function computes and returns results in memory. Given a decomposition it calls
    :func:`collect_inputs` (one ``dask.compute``); given the output of
    :func:`collect_inputs` it computes nothing with dask.

    Parameters
    ----------
    dec
        A decomposition, or the output of :func:`collect_inputs` (to measure and plot from
        one pass over the data).
    hidden
        Optional hidden-state store ``dec`` was made from: enables ``hidden_norm``,
        ``relative_norm`` and ``resid_sv`` (see :func:`collect_inputs`). Ignored when ``dec``
        is already collected.
    hidden_spectral_norm
        Optional spectral norm of the ``CT x d`` hidden states (with their mean) per layer,
        if known from elsewhere: a DataArray with a ``layer`` dim or one value per layer. It
        takes precedence over ``hidden``. With neither, ``relative_norm`` is NaN: the
        decomposition alone does not determine it (the residual's second moment is missing).
    params
        Settings (:class:`~posctx.geometry.kernels.GeometryParams`); default settings if
        None. Ignored for ``max_contexts`` and ``seed`` when ``dec`` is already collected.
    progress
        Show tqdm bars (the dask pass, then the layers).

    Returns
    -------
    xarray.Dataset
        The variables of :data:`METRICS`, over ``layer`` (with ``layer_name``), ``component``
        (singular value index) and ``angle`` (principal angle index). attrs
        ``posctx_geometry``: a JSON record of the settings, sizes, topics and whether the
        relative norm and residual spectrum could be computed.

    Examples
    --------
    >>> import posctx
    >>> from posctx.testing import planted_hidden
    >>> ds, truth = planted_hidden(60, 24, 2, 8, n_topics=3)
    >>> dec = posctx.decompose(ds)
    >>> m = measure_geometry(dec, hidden=ds)
    >>> m.pos_screenot_rank.values.tolist(), bool((m.ctx_within > m.ctx_between).all())
    ([3, 3], True)
    >>> m.relative_norm.dims
    ('layer',)
    """
    params = params or GeometryParams()
    inputs = (
        dec
        if INPUTS_ATTR in dec.attrs
        else collect_inputs(dec, hidden=hidden, params=params, progress=progress)
    )
    record = inputs_record(inputs)
    n_contexts, n_positions = record["n_contexts"], record["n_positions"]
    n_layers, n_dims = inputs.sizes[LAYER], inputs.sizes[DIM]
    # Plain str: topics read from Zarr may come as numpy's StringDType, which sklearn refuses
    # and which cannot be cast to "<U" directly.
    topics = (
        np.array([str(t) for t in inputs[TOPIC].values])
        if TOPIC in inputs.coords
        else np.full(inputs.sizes[CONTEXT], "all")
    )
    rng = np.random.default_rng(params.seed)

    widths = {COMPONENT: n_dims, ANGLE: params.subspace_dim}
    values: dict[str, npt.NDArray[np.float64]] = {
        name: np.full((n_layers, *(widths[d] for d in dims[1:])), np.nan)
        for name, (dims, _) in METRICS.items()
    }
    if hidden_spectral_norm is not None:
        values["hidden_norm"] = _spectral_norm_given(hidden_spectral_norm, inputs[LAYER])
    layers = range(n_layers)
    if progress:
        from tqdm.std import tqdm

        layers = tqdm(layers, desc="geometry: layers", unit="layer")
    for i in layers:
        pos = np.asarray(inputs["pos"].isel({LAYER: i}).values, dtype=np.float64)
        ctx = np.asarray(inputs["ctx"].isel({LAYER: i}).values, dtype=np.float64)
        one = kernels.layer_geometry(pos, ctx, topics, params, rng)
        for name in kernels.SCALAR_NAMES:
            values[name][i] = one[name]
        values["pos_sv"][i, : one["pos_sv"].size] = one["pos_sv"]
        values["pos_sv"][i, one["pos_sv"].size :] = 0.0
        values["orth_principal_cos"][i] = one["orth_principal_cos"]
        values["orth_principal_cos_random"][i] = one["orth_principal_cos_random"]
        ctx_gram = np.asarray(inputs["ctx_gram"].isel({LAYER: i}).values)
        values["ctx_sv"][i] = kernels.gram_spectrum(ctx_gram)
        if "hidden_gram" in inputs:
            hidden_gram = np.asarray(inputs["hidden_gram"].isel({LAYER: i}).values)
            if hidden_spectral_norm is None:
                values["hidden_norm"][i] = kernels.gram_spectrum(hidden_gram)[0]
            mu = np.asarray(inputs["mu"].isel({LAYER: i}).values)
            resid = kernels.resid_gram(hidden_gram, mu, pos, ctx_gram, n_contexts, n_positions)
            values["resid_sv"][i] = kernels.gram_spectrum(resid)
    # ||1_C (x) pos||_2 = sqrt(C) ||pos||_2: pos repeated for every context.
    values["relative_norm"] = np.sqrt(n_contexts) * values["pos_norm"] / values["hidden_norm"]
    total = np.asarray(inputs["ss_total"].values, dtype=np.float64)
    for part in ("pos", "ctx", "resid"):
        values[f"share_{part}"] = np.asarray(inputs[f"ss_{part}"].values, dtype=np.float64) / total

    data: dict[str, npt.NDArray[Any]] = dict(values)
    for name in INTEGER_METRICS:
        data[name] = values[name].astype(np.int64)  # always defined: no NaN to keep

    coords: dict[Hashable, Any] = {LAYER: inputs[LAYER].values, COMPONENT: np.arange(n_dims)}
    coords[ANGLE] = np.arange(params.subspace_dim)
    if LAYER_NAME in inputs.coords:
        coords[LAYER_NAME] = (LAYER, inputs[LAYER_NAME].values)
    unique_topics = [str(t) for t in np.unique(topics)]
    geometry_record = {
        "params": json.loads(params.to_json()),
        "n_contexts": n_contexts,
        "n_positions": n_positions,
        "n_sampled_contexts": int(inputs.sizes[CONTEXT]),
        "n_dims": int(n_dims),
        "topics": unique_topics,
        "relative_norm": "given"
        if hidden_spectral_norm is not None
        else (
            "hidden store" if "hidden_gram" in inputs else "missing: pass the hidden-state store"
        ),
        "resid_spectrum": "hidden_gram" in inputs,
    }
    return xr.Dataset(
        {name: (dims, data[name], {"description": text}) for name, (dims, text) in METRICS.items()},
        coords=coords,
        attrs={GEOMETRY_ATTR: json.dumps(geometry_record, sort_keys=True)},
    )


def pos_gram(inputs: xr.Dataset, layer_index: int) -> npt.NDArray[np.float64]:
    """Gram matrix ``(T, T)`` of the row-normalised pos of one layer (by index), in memory.

    Examples
    --------
    >>> import posctx
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(10, 6, 2, 4)
    >>> g = pos_gram(posctx.decompose(ds).compute(), 1)
    >>> g.shape, round(float(g[0, 0]), 6)
    ((6, 6), 1.0)
    """
    p = kernels.normalise_rows(np.asarray(inputs["pos"].isel({LAYER: layer_index}).values))
    gram: npt.NDArray[np.float64] = p @ p.T
    return gram


__all__ = [
    "ANGLE",
    "COMPONENT",
    "DIM2",
    "GEOMETRY_ATTR",
    "INPUTS_ATTR",
    "METRICS",
    "REQUIRED",
    "GeometryParams",
    "collect_inputs",
    "geometry_record",
    "measure_geometry",
    "metrics_table",
    "metrics_to_dict",
    "pos_gram",
    "provenance",
]
