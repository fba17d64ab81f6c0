"""posctx.attention.adapters: each family's weights reproduce the torch modules' own outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import xarray as xr

from posctx.attention.adapters import (
    FAMILIES,
    _forward_attention,
    _linear,
    _norm_arrays,
    attention_weights,
    check_model,
    model_from_store,
)
from posctx.attention.kernels import apply_norm, project
from posctx.config import ModelConfig
from posctx.errors import ModelError, PosctxError
from posctx.model import LoadedModel, load_model

KINDS = ["bert", "roberta", "gpt2", "llama", "mistral", "qwen2"]
T, WIDTH, HEADS = 10, 32, 4
HEAD_DIM = WIDTH // HEADS


def _build(kind: str) -> Any:
    """A 2-block model in float64, every bias and norm weight nonzero."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    small: dict[str, Any] = dict(
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        max_position_embeddings=64,
        vocab_size=100,
    )
    if kind == "bert":
        model = tf.BertModel(tf.BertConfig(**small))
    elif kind == "roberta":
        model = tf.RobertaModel(tf.RobertaConfig(**small))
    elif kind == "gpt2":
        model = tf.GPT2Model(
            tf.GPT2Config(
                n_embd=WIDTH,
                n_layer=2,
                n_head=HEADS,
                n_positions=64,
                vocab_size=100,
                scale_attn_by_inverse_layer_idx=True,
            )
        )
    elif kind == "llama":  # grouped KV heads, with query/key biases
        model = tf.LlamaModel(tf.LlamaConfig(**small, num_key_value_heads=2, attention_bias=True))
    elif kind == "mistral":  # one KV head, no biases
        model = tf.MistralModel(tf.MistralConfig(**small, num_key_value_heads=1))
    else:
        model = tf.Qwen2Model(tf.Qwen2Config(**small, num_key_value_heads=2))
    model.eval()
    for param in model.parameters():
        if param.ndim == 1:
            torch.nn.init.normal_(param, mean=0.5, std=0.3)
    return model.double()


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {kind: _build(kind) for kind in KINDS}


def _torch_qk(model: Any, kind: str, layer: int, x: Any) -> tuple[Any, Any, Any]:
    """The block's normed input, and its queries and keys per head, from the torch modules."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b = x.shape[0]
    with torch.no_grad():
        if kind in ("bert", "roberta"):
            attn = model.encoder.layer[layer].attention.self
            normed, q, k = x, attn.query(x), attn.key(x)
        elif kind == "gpt2":
            block = model.h[layer]
            normed = block.ln_1(x)
            q, k, _ = block.attn.c_attn(normed).split(WIDTH, dim=2)
        else:
            block = model.layers[layer]
            normed = block.input_layernorm(x)
            q = block.self_attn.q_proj(normed).view(b, T, -1, HEAD_DIM).transpose(1, 2)
            k = block.self_attn.k_proj(normed).view(b, T, -1, HEAD_DIM).transpose(1, 2)
            cos, sin = model.rotary_emb(x, position_ids=torch.arange(T)[None])
            q, k = (v.transpose(1, 2) for v in apply_rotary_pos_emb(q, k, cos, sin))
    return (
        normed.numpy(),
        q.reshape(b, T, -1, HEAD_DIM).numpy(),
        k.reshape(b, T, -1, HEAD_DIM).numpy(),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", [0, 1])
def test_norm_queries_and_keys_match_the_torch_modules(
    kind: str, layer: int, models: dict[str, Any]
) -> None:
    import torch

    model = models[kind]
    x = torch.randn(3, T, WIDTH, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    normed, q, k = _torch_qk(model, kind, layer, x)
    weights = attention_weights(model, layer, np.arange(T))
    # transformers' RMSNorm computes in float32 whatever the input dtype; LayerNorm does not.
    tolerance = 1e-6 if weights.norm == "rmsnorm" else 1e-12
    np.testing.assert_allclose(apply_norm(x.numpy(), weights), normed, rtol=tolerance, atol=1e-12)
    np.testing.assert_allclose(project(normed, weights.w_q, weights.b_q, weights), q, atol=1e-12)
    np.testing.assert_allclose(project(normed, weights.w_k, weights.b_k, weights), k, atol=1e-12)


EXPECTED = {
    # kind: (norm, causal, kv_head of the 4 query heads, scaling at layer 1)
    "bert": ("none", False, [0, 1, 2, 3], HEAD_DIM**-0.5),
    "roberta": ("none", False, [0, 1, 2, 3], HEAD_DIM**-0.5),
    "gpt2": ("layernorm", True, [0, 1, 2, 3], HEAD_DIM**-0.5 / 2),  # divided by layer + 1
    "llama": ("rmsnorm", True, [0, 0, 1, 1], HEAD_DIM**-0.5),
    "mistral": ("rmsnorm", True, [0, 0, 0, 0], HEAD_DIM**-0.5),
    "qwen2": ("rmsnorm", True, [0, 0, 1, 1], HEAD_DIM**-0.5),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_family_records_its_norm_masking_heads_and_scaling(
    kind: str, models: dict[str, Any]
) -> None:
    model = models[kind]
    weights = attention_weights(model, 1, np.arange(T))
    norm, causal, kv_head, scaling = EXPECTED[kind]
    assert weights.model_type == kind
    assert (weights.norm, weights.causal, weights.kv_head.tolist()) == (norm, causal, kv_head)
    assert weights.scaling == pytest.approx(scaling, rel=1e-15)
    assert weights.w_q.shape == (WIDTH, HEADS, HEAD_DIM) and weights.b_q.shape == (HEADS, HEAD_DIM)
    assert (weights.rope_cos is None) == (kind in ("bert", "roberta", "gpt2"))
    if norm == "none":
        assert weights.norm_weight is None and weights.norm_bias is None
    elif norm == "layernorm":
        ln = model.h[1].ln_1
        assert weights.norm_eps == ln.eps
        np.testing.assert_array_equal(weights.norm_bias, ln.bias.detach().numpy())
    else:
        rms = model.layers[1].input_layernorm
        assert weights.norm_eps == rms.variance_epsilon and weights.norm_bias is None
        np.testing.assert_array_equal(weights.norm_weight, rms.weight.detach().numpy())
    if kind == "mistral":  # no query/key bias: zeros, the shape of a bias
        assert not weights.b_q.any() and weights.b_k.shape == (1, HEAD_DIM)
    if kind == "llama":
        bias = model.layers[1].self_attn.q_proj.bias.detach().numpy()
        np.testing.assert_array_equal(weights.b_q, bias.reshape(HEADS, HEAD_DIM))


def test_rotary_tables_follow_the_requested_position_ids(models: dict[str, Any]) -> None:
    full = attention_weights(models["llama"], 0, np.arange(T))
    some = attention_weights(models["llama"], 0, [3, 7, 8])
    assert some.rope_cos is not None and full.rope_cos is not None
    assert some.rope_sin is not None and full.rope_sin is not None
    assert some.rope_cos.shape == (3, HEAD_DIM)
    np.testing.assert_array_equal(some.rope_cos, full.rope_cos[[3, 7, 8]])
    np.testing.assert_array_equal(some.rope_sin, full.rope_sin[[3, 7, 8]])
    np.testing.assert_allclose(full.rope_cos[0], 1.0)  # position 0 is not rotated
    np.testing.assert_allclose(full.rope_sin[0], 0.0, atol=0)


def test_families_share_adapters_by_module_layout() -> None:
    assert FAMILIES["roberta"] is FAMILIES["bert"] is FAMILIES["xlm-roberta"]
    assert FAMILIES["camembert"] is FAMILIES["bert"]
    assert FAMILIES["mistral"] is FAMILIES["llama"] is FAMILIES["qwen2"]
    assert FAMILIES["gpt2"] is not FAMILIES["bert"]


def test_unknown_model_types_and_missing_blocks_are_refused(models: dict[str, Any]) -> None:
    with pytest.raises(ModelError) as info:
        attention_weights(object(), 0, [0])
    assert str(info.value).startswith(
        "attention dissection does not support model type 'None' (object): it knows the "
        "standard self-attention of bert, camembert, gpt2, llama, mistral, qwen2, roberta, "
        "xlm-roberta; add an adapter"
    )
    for layer in (2, -1):
        with pytest.raises(ModelError) as info:
            attention_weights(models["gpt2"], layer, [0])
        assert str(info.value) == (
            f"layer {layer} has no attention: transformer block l reads hidden state l, so gpt2 "
            "with 2 transformer blocks has attention at layers 0..1 (hidden state 2 is the last "
            "transformer block's output)"
        )


def test_norm_epsilon_is_found_under_either_name_or_refused() -> None:
    assert _norm_arrays(SimpleNamespace(variance_epsilon=1e-6), "RMSNorm") == (None, None, 1e-6)
    weight, bias, eps = _norm_arrays(
        SimpleNamespace(weight=_tensor([1.0, 2.0]), bias=None, eps=1e-5), "LayerNorm"
    )
    assert weight is not None and weight.tolist() == [1.0, 2.0] and weight.dtype == np.float64
    assert (bias, eps) == (None, 1e-5)
    with pytest.raises(
        ModelError, match="cannot find the epsilon of the LayerNorm SimpleNamespace"
    ):
        _norm_arrays(SimpleNamespace(weight=None), "LayerNorm")


def _tensor(values: list[float]) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.float32)


def test_linear_reshapes_out_features_into_heads() -> None:
    import torch

    linear = torch.nn.Linear(6, 4, bias=False)
    w, b = _linear(linear, heads=2, head_dim=2)
    assert w.shape == (6, 2, 2) and b.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    x = np.arange(6.0)
    with torch.no_grad():
        expected = linear(torch.as_tensor(x, dtype=torch.float32)).numpy().reshape(2, 2)
    np.testing.assert_allclose(np.einsum("d,dhe->he", x, w), expected, rtol=1e-6)


# --- the models that made a store --------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"]), batch_size=3))


def _store_attrs(loaded: LoadedModel, weights_hash: str | None) -> xr.Dataset:
    model: dict[str, Any] = {} if weights_hash is None else {"weights_hash": weights_hash}
    return xr.Dataset(
        attrs={"posctx": {"config": {"model": loaded.config.to_dict()}, "model": model}}
    )


def test_check_model_accepts_the_recorded_or_unrecorded_hash_and_refuses_another(
    gpt2: LoadedModel,
) -> None:
    check_model(gpt2, _store_attrs(gpt2, gpt2.weights_hash))
    check_model(gpt2, _store_attrs(gpt2, None))
    check_model(gpt2, xr.Dataset())
    with pytest.raises(ModelError) as info:
        check_model(gpt2, _store_attrs(gpt2, "0" * 32))
    assert str(info.value) == (
        f"model {gpt2.config.name!r} as loaded now is not the model that made this store "
        f"(weights hash {gpt2.weights_hash} loaded, {'0' * 32} recorded): the attention of other "
        "weights does not belong with these hidden states; load the recorded weights"
    )


def test_model_from_store_loads_the_recorded_model_with_eager_attention(gpt2: LoadedModel) -> None:
    assert gpt2.model.config._attn_implementation != "eager"
    loaded = model_from_store(_store_attrs(gpt2, gpt2.weights_hash), device="cpu")
    assert loaded.weights_hash == gpt2.weights_hash
    assert loaded.config == dataclasses.replace(gpt2.config, attn_implementation="eager")
    assert loaded.model.config._attn_implementation == "eager"
    with pytest.raises(ModelError, match="not the model that made this store"):
        model_from_store(_store_attrs(gpt2, "0" * 32))
    with pytest.raises(PosctxError) as info:
        model_from_store(xr.Dataset(attrs={"posctx": {"model": {}}}))
    assert str(info.value) == (
        "the hidden-state store has no provenance record of its model "
        "(attrs['posctx']['config']['model']): pass a store written by `posctx extract`"
    )


def test_forward_attention_returns_the_models_probabilities_at_the_chosen_entries(
    gpt2: LoadedModel,
) -> None:
    import torch

    ids = np.random.default_rng(0).integers(3, 800, size=(5, 12))  # two batches: 3 + 2
    index, heads = np.array([1, 4, 5, 9]), np.array([1])
    probs, inputs = _forward_attention(gpt2, ids, 1, index, heads)
    assert gpt2.model.config._attn_implementation == "sdpa"  # restored
    assert probs.shape == (5, 1, 4, 4) and inputs.shape == (5, 4, WIDTH)
    gpt2.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = gpt2.model(
                input_ids=torch.as_tensor(ids),
                output_attentions=True,
                output_hidden_states=True,
            )
    finally:
        gpt2.model.set_attn_implementation("sdpa")
    own = out.attentions[1].double().numpy()[:, [1]][:, :, index][:, :, :, index]
    np.testing.assert_allclose(probs, own, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(inputs, out.hidden_states[1].double().numpy()[:, index], atol=1e-6)
    assert (probs[:, 0][:, np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0).all()  # causal
