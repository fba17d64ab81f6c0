"""posctx.geometry.kernels.moments: per-chunk Gram blocks and the residual's second moment."""

from __future__ import annotations

import numpy as np
import pytest

from posctx.geometry.kernels.moments import gram_block, gram_chunk, resid_gram
from posctx.testing import planted_components


def test_a_chunk_gram_is_a_block_of_the_per_layer_gram_array() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 2, 5)).astype(np.float16)  # (context, position, layer, dim)
    centre = rng.normal(size=(2, 5))
    g = gram_chunk(x, centre)
    assert g.shape == (1, 1, 2, 5, 5) and g.dtype == np.float64
    for layer in range(2):
        rows = x[:, :, layer].reshape(-1, 5).astype(np.float64) - centre[layer]
        np.testing.assert_allclose(g[0, 0, layer], rows.T @ rows, rtol=1e-12)


def test_chunk_grams_add_up_to_the_gram_of_the_whole() -> None:
    x = np.random.default_rng(1).normal(size=(10, 3, 1, 4))
    centre = x.mean(axis=(0, 1))
    whole = gram_chunk(x, centre)[0, 0]
    parts = gram_chunk(x[:4], centre)[0, 0] + gram_chunk(x[4:], centre)[0, 0]
    np.testing.assert_allclose(parts, whole, rtol=1e-12)


def test_the_residual_second_moment_follows_from_the_two_way_identity() -> None:
    parts = planted_components(7, 5, 2, 3, noise=0.5)
    for layer in range(2):
        h = parts["h"][:, :, layer].reshape(-1, 3)
        r = parts["resid"][:, :, layer].reshape(-1, 3)
        ctx = parts["ctx"][:, layer]
        got = resid_gram(h.T @ h, parts["mu"][layer], parts["pos"][:, layer], ctx.T @ ctx, 7, 5)
        np.testing.assert_allclose(got, r.T @ r, atol=1e-9)


def test_gram_block_is_a_deprecated_name_of_gram_chunk() -> None:
    x = np.ones((2, 1, 3))
    with pytest.warns(FutureWarning, match="posctx.geometry.kernels.gram_block is deprecated"):
        old = gram_block(x, np.zeros((1, 3)))
    np.testing.assert_array_equal(old, gram_chunk(x, np.zeros((1, 3))))
