"""posctx.model.loading: devices, local folders and hub ids checked before loading; the loaded
model's layers, framing, positions and weights hash; each refusal's exact message."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from posctx.config import ModelConfig
from posctx.errors import ModelError
from posctx.model.loading import (
    LoadedModel,
    SpecialTokens,
    _hub_offline,
    _is_decoder,
    _max_positions,
    check_device,
    check_length,
    check_loadable,
    load_model,
    special_tokens,
    weights_hash,
)

CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def bert(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["bert"])))


@pytest.fixture(scope="module")
def gpt2(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"])))


def _message(exc: pytest.ExceptionInfo[BaseException]) -> str:
    return str(exc.value)


# --- devices ---------------------------------------------------------------------------------


def test_devices_torch_knows_and_this_machine_has_are_returned() -> None:
    assert check_device("cpu") == torch.device("cpu")
    assert check_device("cpu:0") == torch.device("cpu", 0)
    assert check_device("meta") == torch.device("meta")  # neither CUDA nor MPS: not looked up


def test_a_device_torch_does_not_know_is_refused_with_torchs_first_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ModelError) as info:
        check_device("cuda:x")
    assert _message(info) == (
        "device 'cuda:x' is not a device torch knows (Invalid device string: 'cuda:x'): "
        "use --device cpu, cuda or cuda:N"
    )
    with pytest.raises(ModelError) as info:
        check_device("tpu")
    assert _message(info).startswith("device 'tpu' is not a device torch knows (Expected one of ")
    assert _message(info).endswith(": tpu): use --device cpu, cuda or cuda:N")

    def talkative(name: str) -> Any:
        raise RuntimeError("first line\nsecond line\n" + "x" * 500)

    monkeypatch.setattr(torch, "device", talkative)
    with pytest.raises(ModelError, match=r"knows \(first line\): use"):
        check_device("odd")

    def silent(name: str) -> Any:
        raise RuntimeError("  ")

    monkeypatch.setattr(torch, "device", silent)
    with pytest.raises(ModelError, match=r"knows \(RuntimeError\): use"):
        check_device("odd")


@pytest.mark.parametrize(
    ("available", "count", "name", "have"),
    [
        (False, 2, "cuda", "no usable CUDA GPU"),  # a driver without a usable GPU counts 0
        (True, 0, "cuda", "no usable CUDA GPU"),
        (True, 1, "cuda:1", "1 CUDA device (cuda:0)"),
        (True, 3, "cuda:3", "3 CUDA devices (cuda:0..cuda:2)"),
    ],
)
def test_a_missing_gpu_is_refused_with_what_the_machine_has(
    monkeypatch: pytest.MonkeyPatch, available: bool, count: int, name: str, have: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(ModelError) as info:
        check_device(name)
    also = " or --device cuda:0" if available and count else ""
    assert _message(info) == (
        f"device {name!r} is not available: this machine has {have}: use --device cpu{also}"
    )


def test_a_present_gpu_is_returned_without_touching_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda") == torch.device("cuda")
    assert check_device("cuda:1") == torch.device("cuda", 1)


def test_mps_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelError) as info:
        check_device("mps")
    assert _message(info) == (
        "device 'mps' is not available (no Apple GPU, or torch built without MPS): use --device cpu"
    )
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert check_device("mps") == torch.device("mps")


# --- local folders and hub ids, before any file is read --------------------------------------


def test_local_paths_must_be_model_folders(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    check_loadable(ModelConfig(name=str(tiny_models["bert"])))  # a model folder: fine
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 8)
    with pytest.raises(ModelError) as info:
        check_loadable(ModelConfig(name=str(weights)))
    assert _message(info) == (
        f"model {str(weights)!r} is a file, not a model folder: pass the folder that holds it "
        "(config.json, the weights and the tokenizer files)"
    )
    with pytest.raises(ModelError) as info:
        check_loadable(ModelConfig(name=str(tmp_path)))
    assert _message(info) == (
        f"model {str(tmp_path)!r} is not a model folder (no config.json in {tmp_path}): pass a "
        "folder saved with save_pretrained (config.json, weights, tokenizer files), 'minilm', or "
        "a HuggingFace id"
    )


def test_the_device_is_checked_first(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="device 'tpu' is not a device torch knows"):
        check_loadable(ModelConfig(name=str(tmp_path), device="tpu"))


@pytest.mark.parametrize("name", ["a/b/c", "bad name!", "org/" + "x" * 200])
def test_a_name_that_is_no_path_and_no_hub_id_is_refused(name: str) -> None:
    with pytest.raises(ModelError) as info:
        check_loadable(ModelConfig(name=name))
    assert _message(info) == (
        f"model {name!r} is neither an existing local folder (no such path) nor a valid "
        "HuggingFace id (NAME or ORG/NAME): check the path, or pass 'minilm' or a hub id"
    )


@pytest.mark.parametrize(
    ("hub", "transformers", "offline"),
    [
        ("1", "", True),
        ("ON", "", True),
        (" yes ", "", True),
        ("", "true", True),
        ("0", "0", False),
        ("off", "", False),
        ("", "", False),
    ],
)
def test_downloads_are_off_when_either_variable_says_so(
    monkeypatch: pytest.MonkeyPatch, hub: str, transformers: str, offline: bool
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", hub)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", transformers)
    assert _hub_offline() is offline


def _offline(name: str) -> str:
    return (
        f"cannot load model {name!r}: it is not available locally and downloads are off "
        "(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): run "
        f"`hf download {name}` where the hub is reachable and use that HF_HOME cache here, unset "
        "the variable, or pass 'minilm' or a local model folder"
    )


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HuggingFace hub cache of our own (nothing of the machine's is seen)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache_snapshot(cache: Path, repo: str, files: Path | None) -> Path:
    """Put ``files`` (a model folder; None: a config.json only) in the cache as ``repo``."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    if files is None:
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1}')
    else:
        shutil.copytree(files, snapshot)
    return snapshot


def test_a_hub_id_offline_must_be_in_the_cache(
    hub_cache: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelError) as info:
        check_loadable(ModelConfig(name="no-such-org/no-such-model"))
    assert _message(info) == _offline("no-such-org/no-such-model")
    _cache_snapshot(hub_cache, "my-org/tiny", tiny_models["gpt2"])
    check_loadable(ModelConfig(name="my-org/tiny"))
    loaded = load_model(ModelConfig(name="my-org/tiny"))  # from the cache, offline
    assert loaded.path == "my-org/tiny" and loaded.info()["hf_id"] == "my-org/tiny"
    assert loaded.n_hidden_states == 3
    # Downloads on: the name is left to the hub, which is not asked here.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    check_loadable(ModelConfig(name="no-such-org/no-such-model"))


def test_a_hub_id_cached_in_part_offline_fails_as_offline(hub_cache: Path) -> None:
    """The config is cached (the pre-check passes) but the tokenizer and weights are not."""
    _cache_snapshot(hub_cache, "my-org/partial", None)
    check_loadable(ModelConfig(name="my-org/partial"))
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name="my-org/partial"))
    assert _message(info) == _offline("my-org/partial")


# --- what a loaded model holds ---------------------------------------------------------------


def test_a_bert_loads_with_its_layers_framing_and_record(bert: LoadedModel) -> None:
    assert (bert.n_hidden_states, bert.layers) == (3, (0, 1, 2))
    assert bert.layer_names == ("embeddings", "block_1", "block_2")
    assert (bert.hidden_size, bert.max_positions) == (32, 64)
    assert bert.special == SpecialTokens("model", (CLS,), (SEP,), ("[CLS]",), ("[SEP]",), ())
    assert bert.weights_hash == weights_hash(bert.model) and len(bert.weights_hash) == 32
    assert not bert.model.training and next(bert.model.parameters()).dtype == torch.float32
    ids = bert.encode("hello world")
    assert bert.tokenizer("hello world")["input_ids"] == [CLS, *ids, SEP]
    info = bert.info()
    assert {k: info[k] for k in ("name", "hf_id", "path")} == dict.fromkeys(
        ("name", "hf_id", "path"), bert.config.name
    )
    assert info["architecture"] == "BertModel" and info["model_type"] == "bert"
    assert info["is_decoder"] is False and info["vocab_size"] == 30522
    assert (info["n_hidden_states"], info["hidden_size"], info["max_positions"]) == (3, 32, 64)
    assert (info["dtype"], info["device"], info["batch_size"]) == ("float32", "cpu", 32)
    assert info["attn_implementation"] == bert.model.config._attn_implementation
    assert info["tokenizer"] == type(bert.tokenizer).__name__
    assert info["special_tokens"] == {
        "policy": "model",
        "prefix_ids": [CLS],
        "suffix_ids": [SEP],
        "prefix_tokens": ["[CLS]"],
        "suffix_tokens": ["[SEP]"],
        "separator_ids": [],
    }
    assert info["torch_version"] == torch.__version__


def test_decoders_are_framed_as_their_tokenizers_frame_text(
    gpt2: LoadedModel, tiny_models: dict[str, Path]
) -> None:
    assert gpt2.special == SpecialTokens("model", (), (), (), (), ())  # GPT-2 adds nothing
    assert gpt2.info()["is_decoder"] is True and gpt2.max_positions == 64  # from n_positions
    llama = load_model(ModelConfig(name=str(tiny_models["llama"])))
    assert llama.special == SpecialTokens("model", (1,), (), ("<s>",), (), ())  # BOS only
    assert llama.info()["is_decoder"] is True and llama.info()["model_type"] == "llama"


def test_chosen_layers_keep_their_order_and_get_their_names(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(ModelConfig(name=str(tiny_models["bert"]), layers=(2, 0)))
    assert loaded.layers == (2, 0) and loaded.layer_names == ("block_2", "embeddings")
    assert loaded.n_hidden_states == 3


def test_layers_that_do_not_exist_are_refused(tiny_models: dict[str, Path]) -> None:
    name = str(tiny_models["gpt2"])
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name=name, layers=(0, 3, 7)))
    assert _message(info) == (
        f"layers [3, 7] do not exist: {name!r} has hidden states 0..2 (0 = embedding output): "
        "pick --layers from 0..2, or leave it out for all"
    )


def test_policy_none_frames_nothing(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(ModelConfig(name=str(tiny_models["bert"]), special_tokens="none"))
    assert loaded.special == SpecialTokens("none", (), (), (), (), ())


def test_the_compute_dtype_is_loaded_and_changes_the_hash(
    bert: LoadedModel, tiny_models: dict[str, Path]
) -> None:
    half = load_model(ModelConfig(name=str(tiny_models["bert"]), dtype="bfloat16"))
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert half.weights_hash != bert.weights_hash


def test_an_encoder_decoder_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import T5Config, T5Model

    folder = tmp_path / "t5"
    T5Model(
        T5Config(vocab_size=1024, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    ).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_models["gpt2"] / name, folder)
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name=str(folder)))
    assert _message(info) == (
        f"model {str(folder)!r} is an encoder-decoder; posctx extracts encoder-only or "
        "decoder-only models"
    )


def test_missing_or_damaged_weights_are_named(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_models["gpt2"], tmp_path / "m"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name=str(folder)))
    assert _message(info).startswith(
        f"cannot load model {str(folder)!r}: a weights file is damaged"
    )
    assert _message(info).endswith(
        "as an interrupted download or copy leaves it: download or copy the model again"
    )
    weights.unlink()
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name=str(folder)))
    assert _message(info) == (
        f"cannot load model {str(folder)!r} (Error no file named model.safetensors, or "
        f"pytorch_model.bin, found in directory {folder}.): pass 'minilm', a local model "
        "directory, or a HuggingFace id on a machine that can reach the hub"
    )


def test_an_unknown_attention_implementation_is_refused(tiny_models: dict[str, Path]) -> None:
    name = str(tiny_models["gpt2"])
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name=name, attn_implementation="warp-speed"))
    assert _message(info).startswith(
        f"attention implementation 'warp-speed' is not available for model {name!r} ("
    )
    assert _message(info).endswith(
        "): use --attn-implementation eager or sdpa, or leave the option out"
    )
    eager = load_model(ModelConfig(name=name, attn_implementation="eager"))
    assert eager.info()["attn_implementation"] == "eager"


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here"
)
def test_an_attention_implementation_whose_package_is_missing_is_refused(
    tiny_models: dict[str, Path],
) -> None:
    name = str(tiny_models["gpt2"])
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name=name, attn_implementation="flash_attention_2"))
    assert _message(info).startswith(
        f"attention implementation 'flash_attention_2' is not available for model {name!r} ("
    )
    assert "FlashAttention2" in _message(info)
    assert _message(info).endswith(
        "): use --attn-implementation eager or sdpa, or leave the option out"
    )


def test_another_missing_package_is_left_to_transformers_message(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    def needs_sentencepiece(*args: Any, **kwargs: Any) -> Any:
        raise ImportError("this tokenizer requires the SentencePiece library")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", needs_sentencepiece)
    for impl in (None, "eager"):
        with pytest.raises(ImportError, match="requires the SentencePiece library"):
            load_model(ModelConfig(name=str(tiny_models["gpt2"]), attn_implementation=impl))


def test_a_device_the_model_cannot_move_to_is_refused(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_to(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the driver is too old")

    monkeypatch.setattr(torch.nn.Module, "to", broken_to)
    with pytest.raises(ModelError) as info:
        load_model(ModelConfig(name=str(tiny_models["gpt2"])))
    assert _message(info) == (
        "device 'cpu' is not usable here (the driver is too old): use --device cpu"
    )


# --- context length, positions, decoders -----------------------------------------------------


def test_lengths_beyond_the_position_table_are_refused(bert: LoadedModel) -> None:
    check_length(bert, 64)
    with pytest.raises(ModelError) as info:
        check_length(bert, 65)
    assert _message(info) == (
        f"--length 65 exceeds the 64 positions model {bert.config.name!r} supports: "
        "use --length 64 or less"
    )
    check_length(dataclasses.replace(bert, max_positions=None), 10**6)  # no table: no limit


def _model(**config: Any) -> Any:
    return SimpleNamespace(config=SimpleNamespace(**config))


def test_the_position_table_size_leaves_out_the_rows_offset_models_reserve() -> None:
    assert _max_positions(_model(max_position_embeddings=512, n_positions=9)) == 512
    assert _max_positions(_model(n_positions=1024)) == 1024
    assert _max_positions(_model(max_position_embeddings=0, seq_length=2048)) == 2048
    assert _max_positions(_model(hidden_size=8)) is None  # e.g. rotary only
    roberta = {"model_type": "roberta", "max_position_embeddings": 514}
    assert _max_positions(_model(**roberta, pad_token_id=1)) == 512
    assert _max_positions(_model(**roberta, pad_token_id=None)) == 512  # pad 1 assumed
    assert _max_positions(_model(**{**roberta, "model_type": "xlm-roberta"}, pad_token_id=3)) == 510


def test_decoders_are_told_by_flag_architecture_or_type() -> None:
    assert _is_decoder(_model(is_decoder=True, model_type="bert"))
    assert _is_decoder(_model(architectures=["MyNewForCausalLM"], model_type="new"))
    assert _is_decoder(_model(model_type="qwen2"))
    assert not _is_decoder(_model(architectures=["BertForMaskedLM"], model_type="bert"))
    assert not _is_decoder(_model(architectures=None))


# --- special tokens, from the tokenizer's own framing ----------------------------------------


class _Tokenizer:
    """Encodes words as ids 10, 11, ... and frames text as told; ``shift`` changes the text
    tokens when framing (as a tokenizer that adds a prefix space does)."""

    def __init__(
        self,
        prefix: list[int],
        suffix: list[int],
        separator: list[int],
        names: dict[int, str],
        shift: int = 0,
    ) -> None:
        self.prefix, self.suffix, self.separator, self.names = prefix, suffix, separator, names
        self.shift = shift

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        if not text.strip():
            return {"input_ids": list(self.separator)}
        ids = [10 + i for i, _ in enumerate(text.split())]
        if add_special_tokens:
            ids = self.prefix + [i + self.shift for i in ids] + self.suffix
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.names[i] for i in ids]


def test_special_tokens_are_found_around_a_probe() -> None:
    bert_style = _Tokenizer([CLS], [SEP], [], {CLS: "[CLS]", SEP: "[SEP]"})
    assert special_tokens(bert_style, "model") == SpecialTokens(
        "model", (CLS,), (SEP,), ("[CLS]",), ("[SEP]",), ()
    )
    gpt2_style = _Tokenizer([], [], [628], {})  # no framing; "\n\n" is one text token
    assert special_tokens(gpt2_style, "model") == SpecialTokens("model", (), (), (), (), (628,))
    two_and_eos = _Tokenizer([1, 5], [2], [13, 13], {1: "<s>", 5: "<lang>", 2: "</s>"})
    got = special_tokens(two_and_eos, "model")
    assert (got.prefix_tokens, got.suffix_tokens, got.separator_ids) == (
        ("<s>", "<lang>"),
        ("</s>",),
        (13, 13),
    )
    assert special_tokens(bert_style, "none") == SpecialTokens("none", (), (), (), (), ())
    assert special_tokens(gpt2_style, "none").separator_ids == (628,)  # kept without framing
    assert got.to_dict() == {
        "policy": "model",
        "prefix_ids": [1, 5],
        "suffix_ids": [2],
        "prefix_tokens": ["<s>", "<lang>"],
        "suffix_tokens": ["</s>"],
        "separator_ids": [13, 13],
    }


def test_a_framing_that_changes_the_text_tokens_is_refused() -> None:
    with pytest.raises(ModelError) as info:
        special_tokens(_Tokenizer([1], [], [], {1: "<s>"}, shift=100), "model")
    assert _message(info) == (
        "cannot locate text tokens inside the tokenizer's special-token framing "
        "[1, 110, 111, 112]: use --special-tokens none"
    )


# --- the weights hash ------------------------------------------------------------------------


def _linear(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = torch.nn.Linear(3, 2)
    module.register_buffer("scale", torch.ones(2))
    return module


def test_the_weights_hash_follows_every_value_name_shape_and_dtype() -> None:
    base = weights_hash(_linear())
    assert weights_hash(_linear()) == base and len(base) == 32
    assert weights_hash(_linear(seed=1)) != base
    changed = _linear()
    with torch.no_grad():
        changed.weight[1, 2] += 1e-6
    assert weights_hash(changed) != base
    buffer = _linear()
    buffer.scale[0] = 2.0  # buffers are weights too
    assert weights_hash(buffer) != base
    assert weights_hash(_linear().double()) != base
    reshaped = _linear()
    reshaped.weight = torch.nn.Parameter(reshaped.weight.detach().reshape(3, 2).clone())
    assert weights_hash(reshaped) != base  # same bytes, other shape
