"""Attention dissection: the four parts sum to the scores, the scores are the model's own."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import posctx
from posctx.attention import (
    PARTS,
    attention_weights,
    causal_mask,
    dissect_attention,
    dissect_kernel,
    model_from_store,
    softmax_scores,
    toeplitz_kernel,
    toeplitz_share,
)
from posctx.cli import cli
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.decomposition import paper_positions, write_decomposition
from posctx.errors import ModelError, PosctxError
from posctx.extraction import extract
from posctx.model import LoadedModel, forward_hidden, load_model

KINDS = ["bert", "gpt2", "llama"]
N_CONTEXTS, LENGTH = 12, 16


def _relative_error(parts: xr.Dataset) -> float:
    total = sum(parts[name] for name in PARTS)
    return float(np.abs(total - parts.scores).max() / np.abs(parts.scores).max())


# ---------------------------------------------------------------------------------------------
# The model's own pre-softmax scores, captured inside its attention call
# ---------------------------------------------------------------------------------------------

_CAPTURED: list[np.ndarray] = []


def _capture(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kw: Any,
) -> Any:
    """An attention function that records ``scaling * q k^T`` and then runs SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = query.shape[1] // key.shape[1]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    _CAPTURED.append(
        (torch.matmul(query, key.repeat_interleave(groups, dim=1).transpose(-1, -2)) * scale)
        .double()
        .cpu()
        .numpy()
    )
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kw
    )


@pytest.fixture(scope="module")
def own_scores() -> Callable[[Any, np.ndarray], tuple[list[np.ndarray], list[np.ndarray]]]:
    """``(model, ids) -> (scores per block, hidden states)`` from the model's own forward."""
    import torch
    from transformers import AttentionInterface

    AttentionInterface.register("posctx_capture", _capture)

    def run(model: Any, ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        before = model.config._attn_implementation
        model.set_attn_implementation("posctx_capture")
        _CAPTURED.clear()
        try:
            with torch.no_grad():
                ids_t = torch.as_tensor(ids, dtype=torch.long)
                out = model(
                    input_ids=ids_t,
                    attention_mask=torch.ones_like(ids_t),
                    output_hidden_states=True,
                )
        finally:
            model.set_attn_implementation(before)
        return list(_CAPTURED), [h.double().numpy() for h in out.hidden_states]

    return run


# ---------------------------------------------------------------------------------------------
# Tiny stores
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_stores(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, LoadedModel]]:
    """A 12 x 16 store per tiny model, and the model loaded as the store records it."""
    root = tmp_path_factory.mktemp("attention-stores")
    out = {}
    for kind in KINDS:
        config = ExtractConfig(
            corpus=CorpusConfig(spec="stdlib"),
            model=ModelConfig(name=str(tiny_models[kind]), batch_size=4),
            store=StoreConfig(contexts=N_CONTEXTS, length=LENGTH, chunk_contexts=4),
        )
        path = str(root / f"{kind}.zarr")
        extract(config, path, progress=False)
        out[kind] = (path, load_model(config.model))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_parts_sum_to_the_models_own_scores_and_probabilities(
    kind: str, tiny_stores: dict[str, tuple[str, LoadedModel]], own_scores: Any
) -> None:
    path, loaded = tiny_stores[kind]
    ds = posctx.open_hidden(path)
    dec = posctx.decompose(ds).compute()  # every position: the softmax domains match the model's
    ids = ds.token_id.values
    # The stored block inputs are the model's own hidden states for the stored ids.
    np.testing.assert_array_equal(ds.hidden.values, forward_hidden(loaded, ids))
    captured, fresh = own_scores(loaded.model, ids)
    n_blocks = loaded.n_hidden_states - 1
    assert len(captured) == n_blocks
    for layer in range(n_blocks):
        parts = dissect_attention(ds, dec, layer, model=loaded, contexts=N_CONTEXTS)
        assert parts.scores.dims == ("context", "head", "query", "key")
        assert parts.sizes["query"] == parts.sizes["key"] == LENGTH
        assert _relative_error(parts) < 1e-12
        # scores == the pre-softmax scores the model computes inside its attention call
        own = captured[layer]
        np.testing.assert_allclose(parts.scores.values, own, atol=1e-5 * np.abs(own).max())
        # softmax(scores), with the causal mask for decoders == output_attentions
        probs = softmax_scores(
            parts.scores.values,
            parts["query"].values,
            parts["key"].values,
            causal=parts.attrs["causal"],
        )
        np.testing.assert_allclose(probs, parts.pattern.values, atol=1e-6)
        np.testing.assert_allclose(parts.pattern.sum("key"), 1.0, atol=1e-6)
        assert parts.attrs["causal"] == (kind != "bert")
        assert parts.attrs["input_max_abs_diff"] <= 1e-5 * parts.attrs["input_max_abs"]
        np.testing.assert_allclose(ds.hidden.sel(layer=layer).values, fresh[layer], atol=1e-5)
        record = json.loads(parts.attrs["posctx_attention"])
        assert record["layer"] == layer and record["weights_hash"] == loaded.weights_hash


@pytest.mark.parametrize("kind", KINDS)
def test_paper_positions_and_a_subset_of_heads(
    kind: str, tiny_stores: dict[str, tuple[str, LoadedModel]]
) -> None:
    path, loaded = tiny_stores[kind]
    ds = posctx.open_hidden(path)
    dec = posctx.decompose(ds, positions=paper_positions(ds)).compute()
    everything = dissect_attention(
        ds, posctx.decompose(ds).compute(), 1, model=loaded, contexts=[2, 5]
    )
    parts = dissect_attention(ds, dec, 1, model=loaded, contexts=[2, 5], heads=[1])
    expected = list(range(1, LENGTH - 1)) if kind == "bert" else list(range(1, LENGTH))
    assert parts["query"].values.tolist() == expected == parts["key"].values.tolist()
    assert parts["head"].values.tolist() == [1] and parts["context"].values.tolist() == [2, 5]
    assert set(parts.topic.values) <= {"reference", "docstrings", "code"}
    assert _relative_error(parts) < 1e-12
    # The full scores and the pattern do not depend on the decomposition: a sub-block.
    sub = everything.sel(head=[1], query=expected, key=expected)
    np.testing.assert_allclose(parts.scores, sub.scores, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(parts.pattern, sub.pattern)
    # So do the parts: mu + pos[t] is the mean over contexts of h[c, t], whichever positions
    # were decomposed (they change with the contexts: see the single-context test).
    for name in PARTS:
        np.testing.assert_allclose(parts[name], sub[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_single_context_decomposition_leaves_nothing_to_ctx(
    kind: str, tiny_stores: dict[str, tuple[str, LoadedModel]]
) -> None:
    """With one context, ctx = resid = 0: x = mu + pos exactly, so pos-pos is the whole."""
    path, loaded = tiny_stores[kind]
    ds = posctx.open_hidden(path)
    dec = posctx.decompose(ds, contexts=[3]).compute()
    np.testing.assert_allclose(dec.ctx, 0.0, atol=1e-12)
    parts = dissect_attention(ds, dec, 0, model=loaded, contexts=[3])
    scale = float(np.abs(parts.scores).max())
    for name in ("pos_ctx", "ctx_pos", "ctx_ctx"):
        assert float(np.abs(parts[name]).max()) < 1e-9 * scale, name
    np.testing.assert_allclose(parts.pos_pos, parts.scores, atol=1e-9 * scale)


# ---------------------------------------------------------------------------------------------
# Adapters, on in-memory models (no store): grouped KV heads, biases, other families
# ---------------------------------------------------------------------------------------------


def _tiny(kind: str) -> Any:
    import torch
    import transformers as tf

    torch.manual_seed(1)
    small: dict[str, Any] = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=64,
        vocab_size=300,
    )
    if kind == "llama-gqa":
        model = tf.LlamaModel(
            tf.LlamaConfig(
                **small, num_attention_heads=4, num_key_value_heads=2, attention_bias=True
            )
        )
    elif kind == "mistral":
        model = tf.MistralModel(
            tf.MistralConfig(**small, num_attention_heads=4, num_key_value_heads=1)
        )
    elif kind == "qwen2":
        model = tf.Qwen2Model(tf.Qwen2Config(**small, num_attention_heads=4, num_key_value_heads=2))
    elif kind == "roberta":
        model = tf.RobertaModel(tf.RobertaConfig(**small, num_attention_heads=4))
    else:  # GPT-2 with the per-layer scaling option on
        model = tf.GPT2Model(
            tf.GPT2Config(
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=64,
                vocab_size=300,
                scale_attn_by_inverse_layer_idx=True,
            )
        )
    model.eval()
    for param in model.parameters():  # nonzero biases and norm weights everywhere
        if param.ndim == 1:
            torch.nn.init.normal_(param, std=0.3)
    return model


@pytest.mark.parametrize("kind", ["llama-gqa", "mistral", "qwen2", "roberta", "gpt2-layer-scaled"])
def test_adapters_reproduce_the_models_scores(kind: str, own_scores: Any) -> None:
    model = _tiny(kind)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 250, size=(3, 10))
    captured, hidden = own_scores(model, ids)
    positions = np.arange(10)
    for layer in range(2):
        weights = attention_weights(model, layer, positions)
        x = hidden[layer]
        a = x.mean(axis=0) + rng.normal(size=x.shape[1:])  # any split of x works
        parts = dissect_kernel(x, a, weights, np.arange(weights.n_heads))
        own = captured[layer]
        np.testing.assert_allclose(parts["scores"], own, atol=1e-5 * np.abs(own).max())
        total = sum(parts[name] for name in PARTS)
        np.testing.assert_allclose(total, parts["scores"], atol=1e-12 * np.abs(own).max())
    if kind in {"llama-gqa", "qwen2"}:
        assert weights.kv_head.tolist() == [0, 0, 1, 1]


def test_unsupported_architecture_and_bad_layers_or_heads(
    tiny_stores: dict[str, tuple[str, LoadedModel]],
) -> None:
    t5_like = SimpleNamespace(config=SimpleNamespace(model_type="t5"))
    with pytest.raises(ModelError, match="does not support model type 't5'"):
        attention_weights(t5_like, 0, [0, 1])
    path, loaded = tiny_stores["gpt2"]
    ds = posctx.open_hidden(path)
    dec = posctx.decompose(ds).compute()
    with pytest.raises(ModelError, match=r"layers 0\.\.1"):
        dissect_attention(ds, dec, 2, model=loaded)
    with pytest.raises(PosctxError, match="heads"):
        dissect_attention(ds, dec, 0, model=loaded, heads=[7])
    with pytest.raises(PosctxError, match="not in the hidden-state store"):
        dissect_attention(ds, dec, 0, model=loaded, contexts=[99])


def test_other_weights_are_refused(tiny_stores: dict[str, tuple[str, LoadedModel]]) -> None:
    path, loaded = tiny_stores["bert"]
    ds = posctx.open_hidden(path)
    assert model_from_store(ds).weights_hash == loaded.weights_hash
    ds.attrs["posctx"] = copy.deepcopy(ds.attrs["posctx"])
    ds.attrs["posctx"]["model"]["weights_hash"] = "0" * 32
    with pytest.raises(ModelError, match="not the model that made this store"):
        model_from_store(ds)
    with pytest.raises(ModelError, match="not the model that made this store"):
        dissect_attention(ds, posctx.decompose(ds).compute(), 0, model=loaded)


# ---------------------------------------------------------------------------------------------
# The Toeplitz measure, against a plain numpy reference
# ---------------------------------------------------------------------------------------------


def _toeplitz_reference(part: np.ndarray, causal: bool) -> float:
    """Loops: per context, residual of the per-diagonal mean fit; pooled over contexts."""
    n = part.shape[-1]
    ss_res = ss_tot = 0.0
    for matrix in part:
        entries = [(i, j) for i in range(n) for j in range(n) if not causal or j <= i]
        values = np.array([matrix[i, j] for i, j in entries])
        means = {
            d: np.mean([matrix[i, j] for i, j in entries if i - j == d])
            for d in {i - j for i, j in entries}
        }
        ss_res += sum((matrix[i, j] - means[i - j]) ** 2 for i, j in entries)
        ss_tot += float(((values - values.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot


@pytest.mark.parametrize("causal", [False, True])
def test_toeplitz_share_against_numpy_loops(causal: bool) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(3, 10)
    toeplitz = np.cos(0.4 * (t[:, None] - t[None, :]))
    parts = np.stack([toeplitz + 0.3 * rng.normal(size=toeplitz.shape) for _ in range(3)])[:, None]
    parts = np.concatenate([parts, toeplitz[None, None].repeat(3, axis=0)], axis=1)  # 2 heads
    share, std, chance = toeplitz_kernel(parts, t, t, causal=causal)
    assert share[0] == pytest.approx(_toeplitz_reference(parts[:, 0], causal), rel=1e-12)
    assert share[1] == pytest.approx(1.0)
    entries = 28 if causal else 49
    diagonals = 7 if causal else 13
    assert chance == pytest.approx((diagonals - 1) / (entries - 1))
    assert std.shape == (2,)
    noise = rng.normal(size=(50, 4, 7, 7))
    noise_share, _, chance = toeplitz_kernel(noise, t, t, causal=causal)
    assert abs(noise_share.mean() - chance) < 0.05  # noise: the chance level


def test_causal_mask_by_labels() -> None:
    assert causal_mask([1, 2], [1, 2]).tolist() == [[True, False], [True, True]]


# ---------------------------------------------------------------------------------------------
# Figure and command line
# ---------------------------------------------------------------------------------------------


def test_plot(tiny_stores: dict[str, tuple[str, LoadedModel]]) -> None:
    from posctx.attention import plot_attention_dissection
    from posctx.plots import png_bytes

    path, loaded = tiny_stores["llama"]
    ds = posctx.open_hidden(path)
    parts = dissect_attention(ds, posctx.decompose(ds).compute(), 1, model=loaded, contexts=3)
    fig = plot_attention_dissection(parts)
    assert len(fig.axes) == 2 * 5
    assert "mean over 3 contexts" in fig.texts[0].get_text()
    one = plot_attention_dissection(parts, heads=[1], context=2)
    assert len(one.axes) == 5 and [ax.get_title() for ax in one.axes][0] == "pattern"
    assert png_bytes(one)[:4] == b"\x89PNG"


def test_cli_writes_figures_and_measures(
    tiny_stores: dict[str, tuple[str, LoadedModel]], tmp_path: Path
) -> None:
    path, _ = tiny_stores["bert"]
    dec = tmp_path / "d.zarr"
    ds = posctx.open_hidden(path)
    write_decomposition(posctx.decompose(ds, positions=paper_positions(ds)), str(dec))
    out = tmp_path / "att"
    result = CliRunner().invoke(
        cli,
        [
            "attention",
            path,
            str(dec),
            "--layer",
            "0,1",
            "--out",
            str(out),
            "--contexts",
            "3",
            "--heads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Toeplitz share" in result.output and "pos_pos" in result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "attention_layer0.png",
        "attention_layer0_context0.png",
        "attention_layer1.png",
        "attention_layer1_context0.png",
        "toeplitz.csv",
        "toeplitz.json",
    ]
    record = json.loads((out / "toeplitz.json").read_text())
    assert len(record["rows"]) == 2 * 1 * 5  # layers x heads x (4 parts + scores)
    assert {r["head"] for r in record["rows"]} == {1}
    assert (
        (out / "toeplitz.csv").read_text().splitlines()[0].startswith("layer,layer_name,head,part")
    )


# ---------------------------------------------------------------------------------------------
# The real MiniLM
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_store(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("attention-minilm") / "h.zarr")
    config = ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name="minilm", batch_size=16),
        store=StoreConfig(contexts=48, length=48, chunk_contexts=16),
    )
    extract(config, path, progress=False)
    yield path


@pytest.mark.slow
def test_minilm_pos_pos_is_more_toeplitz_than_ctx_ctx(minilm_store: str) -> None:
    ds = posctx.open_hidden(minilm_store)
    dec = posctx.decompose(ds, positions=paper_positions(ds)).compute()
    loaded = model_from_store(ds)
    for layer in (1, 3):
        parts = dissect_attention(ds, dec, layer, model=loaded, contexts=6)
        assert parts.sizes["head"] == 12 and parts.sizes["query"] == 46
        assert _relative_error(parts) < 1e-12
        shares = toeplitz_share(parts).share.mean("head")
        assert float(shares.sel(part="pos_pos")) > float(shares.sel(part="ctx_ctx")) + 0.2


def test_plots_still_serves_the_moved_attention_figure() -> None:
    import posctx.plots
    from posctx.attention import plot_attention_dissection

    with pytest.warns(FutureWarning, match="posctx.attention.figures.plot_attention_dissection"):
        assert posctx.plots.plot_attention_dissection is plot_attention_dissection


def test_a_lazy_decomposition_is_computed_once(
    tiny_stores: dict[str, tuple[str, LoadedModel]],
) -> None:
    """Everything dissect_attention reads comes from one dask.compute: hidden, mu, pos, ids."""
    from posctx.testing import raise_if_dask_computes

    path, loaded = tiny_stores["gpt2"]
    ds = posctx.open_hidden(path)
    eager = dissect_attention(ds, posctx.decompose(ds).compute(), 1, model=loaded, contexts=2)
    with raise_if_dask_computes(max_computes=1) as counter:
        lazy = dissect_attention(ds, posctx.decompose(ds), 1, model=loaded, contexts=2)
    assert counter.total_computes == 1
    for name in (*PARTS, "scores", "pattern"):
        np.testing.assert_allclose(lazy[name], eager[name], rtol=1e-12, atol=1e-12)


def test_the_model_defaults_to_the_recorded_one_and_the_old_order_warns(
    tiny_stores: dict[str, tuple[str, LoadedModel]],
) -> None:
    path, loaded = tiny_stores["llama"]
    ds = posctx.open_hidden(path)
    dec = posctx.decompose(ds).compute()
    recorded = dissect_attention(ds, dec, 1, contexts=[0])  # loads the store's model itself
    with pytest.warns(FutureWarning, match=r"dissect_attention\(hidden, decomposition, layer"):
        old = dissect_attention(loaded, ds, dec, 1, contexts=[0])  # type: ignore[arg-type]
    for name in (*PARTS, "scores", "pattern"):
        np.testing.assert_array_equal(recorded[name], old[name])
    with pytest.raises(TypeError, match="3 positional arguments"):
        dissect_attention(ds, dec, 1, 2)
