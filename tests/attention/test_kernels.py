"""posctx.attention.kernels: the norm split, projections, head scores, masks and Toeplitz share."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from posctx.attention.kernels import (
    AttentionWeights,
    _rotate_half,
    apply_norm,
    causal_mask,
    dissect_kernel,
    head_scores,
    project,
    softmax_scores,
    split_norm,
    toeplitz_kernel,
)

D, HEADS, KV, E = 6, 4, 2, 4  # width, query heads, key heads, head dim


def _weights(
    norm: str, *, gamma: bool = True, beta: bool = True, rope: bool = False
) -> AttentionWeights:
    rng = np.random.default_rng(0)
    t = np.arange(5)[:, None]
    angle = t * np.array([0.3, 0.7, 0.3, 0.7])  # rotate_half pairs dims (0, 2) and (1, 3)
    return AttentionWeights(
        model_type="test",
        norm=norm,
        norm_weight=rng.normal(1.0, 0.2, D) if gamma else None,
        norm_bias=rng.normal(0.0, 0.5, D) if beta else None,
        norm_eps=1e-5,
        w_q=rng.normal(size=(D, HEADS, E)),
        b_q=rng.normal(size=(HEADS, E)),
        w_k=rng.normal(size=(D, KV, E)),
        b_k=rng.normal(size=(KV, E)),
        scaling=E**-0.5,
        rope_cos=np.cos(angle) if rope else None,
        rope_sin=np.sin(angle) if rope else None,
        causal=False,
    )


def test_grouped_query_heads_share_key_heads_in_order() -> None:
    w = _weights("none")
    assert (w.n_heads, w.n_kv_heads, w.kv_head.tolist()) == (4, 2, [0, 0, 1, 1])
    one = dataclasses.replace(w, w_k=w.w_k[:, :1], b_k=w.b_k[:1])
    assert one.kv_head.tolist() == [0, 0, 0, 0]


def test_apply_norm_is_layernorm_or_rmsnorm_by_their_formulas() -> None:
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(3, 5, D))
    ln, rms = _weights("layernorm"), _weights("rmsnorm", beta=False)
    expected_ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(apply_norm(x, ln), ln.norm_weight * expected_ln + ln.norm_bias)
    expected_rms = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(apply_norm(x, rms), rms.norm_weight * expected_rms)
    np.testing.assert_allclose(
        apply_norm(x, _weights("rmsnorm", gamma=False, beta=False)), expected_rms
    )
    np.testing.assert_array_equal(apply_norm(x, _weights("none")), x)


@pytest.mark.parametrize("norm", ["none", "layernorm", "rmsnorm"])
@pytest.mark.parametrize("affine", [True, False])
def test_the_two_parts_add_up_to_the_norm_and_the_bias_goes_with_a(norm: str, affine: bool) -> None:
    rng = np.random.default_rng(2)
    w = _weights(norm, gamma=affine, beta=affine)
    a, b = rng.normal(size=(5, D)), rng.normal(size=(3, 5, D))  # a broadcasts over contexts
    na, nb = split_norm(a, b, w)
    assert na.shape == nb.shape == (3, 5, D)
    np.testing.assert_allclose(na + nb, apply_norm(a + b, w), rtol=1e-12, atol=1e-12)
    # Nothing in b: b's part is zero and a's part is the whole norm (bias included).
    na, nb = split_norm(a, np.zeros_like(a), w)
    np.testing.assert_array_equal(nb, 0.0)
    np.testing.assert_allclose(na, apply_norm(a, w), rtol=1e-12)
    if norm != "none" and affine:  # nothing in a: a's part is the bias alone
        na, _ = split_norm(np.zeros_like(b), b, w)
        np.testing.assert_allclose(na, np.broadcast_to(w.norm_bias, na.shape), rtol=1e-12)


def test_projection_adds_the_bias_then_rotates_each_position() -> None:
    rng = np.random.default_rng(3)
    w = _weights("none", rope=True)
    n = rng.normal(size=(2, 5, D))
    plain = np.einsum("ctd,dhe->cthe", n, w.w_q) + w.b_q
    rotated = project(n, w.w_q, w.b_q, w)
    cos, sin = w.rope_cos[:, None], w.rope_sin[:, None]  # type: ignore[index]
    np.testing.assert_allclose(rotated, plain * cos + _rotate_half(plain) * sin, rtol=1e-12)
    # A rotation: every head's vector keeps its length; position 0 is not turned.
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(plain, axis=-1))
    np.testing.assert_allclose(rotated[:, 0], plain[:, 0], rtol=1e-12)
    np.testing.assert_allclose(project(n, w.w_q, None, w)[:, 0], plain[:, 0] - w.b_q, rtol=1e-12)
    assert _rotate_half(np.array([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]


def test_head_scores_read_each_query_heads_key_head() -> None:
    rng = np.random.default_rng(4)
    w = _weights("none")
    q, k = rng.normal(size=(2, 5, HEADS, E)), rng.normal(size=(2, 5, KV, E))
    scores = head_scores(q, k, w, np.array([3, 0]))
    assert scores.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(scores[:, 0], w.scaling * q[:, :, 3] @ k[:, :, 1].transpose(0, 2, 1))
    np.testing.assert_allclose(scores[:, 1], w.scaling * q[:, :, 0] @ k[:, :, 0].transpose(0, 2, 1))


@pytest.mark.parametrize("norm", ["none", "layernorm", "rmsnorm"])
def test_the_four_parts_add_up_to_the_scores(norm: str) -> None:
    rng = np.random.default_rng(5)
    w = _weights(norm, rope=True)
    x = rng.normal(1.0, 2.0, size=(3, 5, D))
    a = x.mean(axis=0)  # any split works; the mean is the decomposition's
    heads = np.arange(HEADS)
    parts = dissect_kernel(x, a, w, heads)
    total = parts["pos_pos"] + parts["pos_ctx"] + parts["ctx_pos"] + parts["ctx_ctx"]
    np.testing.assert_allclose(total, parts["scores"], rtol=1e-10, atol=1e-10)
    n = apply_norm(x, w)
    direct = head_scores(project(n, w.w_q, w.b_q, w), project(n, w.w_k, w.b_k, w), w, heads)
    np.testing.assert_allclose(parts["scores"], direct, rtol=1e-12)
    same = dissect_kernel(x, x[0], w, heads)  # context 0 is all "pos": its ctx parts vanish
    for name in ("pos_ctx", "ctx_pos", "ctx_ctx"):
        np.testing.assert_allclose(same[name][0], 0.0, atol=1e-10)
    np.testing.assert_allclose(same["pos_pos"][0], same["scores"][0], rtol=1e-10)


def test_causal_mask_compares_labels_not_indices() -> None:
    assert causal_mask([5, 9], [2, 5, 7, 9]).tolist() == [
        [True, True, False, False],
        [True, True, True, True],
    ]


def test_softmax_rows_sum_to_one_and_masked_keys_get_nothing() -> None:
    scores = np.random.default_rng(6).normal(size=(2, 3, 4, 4)) * 1000.0  # no overflow
    before = scores.copy()
    probs = softmax_scores(scores, np.arange(4), np.arange(4), causal=True)
    np.testing.assert_array_equal(scores, before)  # the input is left alone
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    assert (probs[..., np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0).all()
    uniform = softmax_scores(np.zeros((1, 1, 2, 3)), [0, 1], [0, 1, 2], causal=False)
    np.testing.assert_allclose(uniform, 1 / 3)


def test_a_part_without_variance_has_no_share() -> None:
    t = np.arange(4)
    constant = np.full((2, 1, 4, 4), 3.0)
    share, std, chance = toeplitz_kernel(constant, t, t, causal=False)
    assert np.isnan(share[0]) and std[0] == 0.0 and chance == pytest.approx(6 / 15)
    # std: the pooled within-context standard deviation.
    part = np.random.default_rng(7).normal(size=(3, 1, 4, 4))
    _, std, _ = toeplitz_kernel(part, t, t, causal=False)
    flat = part.reshape(3, 16)
    expected = np.sqrt(((flat - flat.mean(axis=1, keepdims=True)) ** 2).sum() / 48)
    assert std[0] == pytest.approx(expected)
