"""Numpy kernels of the geometry measurements: one layer's arrays in, numbers out.

The bottom of the geometry's two numeric layers (numpy kernels -> :mod:`posctx.geometry.api`);
nothing here imports xarray or dask. Every function takes plain arrays of one layer:

* ``pos`` ``(T, d)``: position means, centred over positions;
* ``ctx`` ``(C, d)``: context means, centred over contexts (possibly a sample of them);
* ``topics`` ``(C,)``: one label per context.

One module per measurement family: ``params`` (settings), ``spectra``, ``smoothness``,
``spiral``, ``clusters``, ``orthogonality``, ``moments`` (Gram matrices by chunk) and ``layer``
(all of one layer's measurements).

scikit-learn (k-means and cluster scores) and ``screenot`` (the optimal singular value
threshold) are imported inside the functions that use them, so importing this package stays
light. Formulas and their sources are in ``docs/geometry.md``.

Examples
--------
>>> import numpy as np
>>> t = np.arange(32) / 32
>>> circle = np.stack([np.cos(2 * np.pi * t), np.sin(2 * np.pi * t)], axis=1)
>>> round(stable_rank(singular_values(circle)), 3)
2.0
>>> round(winding_turns(circle), 3)
0.969
"""

from __future__ import annotations

from posctx.geometry.kernels.bootstrap import cell_chunk
from posctx.geometry.kernels.clusters import (
    cluster_scores,
    kmeans_centres,
    label_codes,
    topic_similarity,
)
from posctx.geometry.kernels.layer import finite_or_none, layer_geometry, sample_indices
from posctx.geometry.kernels.moments import gram_block, gram_chunk, resid_gram
from posctx.geometry.kernels.orthogonality import (
    basis_from_svd,
    cross_cosines,
    numerical_rank,
    principal_cosines,
    random_orthonormal,
    top_subspace,
)
from posctx.geometry.kernels.params import SCALAR_NAMES, GeometryParams
from posctx.geometry.kernels.smoothness import (
    dct_basis,
    dct_spectrum,
    low_frequency_share,
    normalise_rows,
    smoothness,
)
from posctx.geometry.kernels.spectra import (
    default_screenot_k,
    energy_rank,
    explained_share,
    gram_spectrum,
    screenot_threshold,
    singular_values,
    stable_rank,
)
from posctx.geometry.kernels.spiral import (
    curve_smoothness,
    pca_scores,
    scores_from_svd,
    winding_turns,
)

__all__ = [
    "SCALAR_NAMES",
    "GeometryParams",
    "basis_from_svd",
    "cell_chunk",
    "cluster_scores",
    "cross_cosines",
    "curve_smoothness",
    "dct_basis",
    "dct_spectrum",
    "default_screenot_k",
    "energy_rank",
    "explained_share",
    "finite_or_none",
    "gram_block",
    "gram_chunk",
    "gram_spectrum",
    "kmeans_centres",
    "label_codes",
    "layer_geometry",
    "low_frequency_share",
    "normalise_rows",
    "numerical_rank",
    "pca_scores",
    "principal_cosines",
    "random_orthonormal",
    "resid_gram",
    "sample_indices",
    "scores_from_svd",
    "screenot_threshold",
    "singular_values",
    "smoothness",
    "stable_rank",
    "top_subspace",
    "topic_similarity",
    "winding_turns",
]
