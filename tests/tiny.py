"""Tiny randomly initialised models with real tokenizers, built offline from config alone."""

from __future__ import annotations

import pydoc_data.topics
import re
from collections import Counter
from pathlib import Path

_WORD = re.compile(r"\w+|[^\w\s]")


def _words(n: int) -> list[str]:
    text = " ".join(pydoc_data.topics.topics.values())
    counts = Counter(_WORD.findall(text))
    return [w for w, _ in counts.most_common(n)]


def save_tiny_bert(path: Path, minilm_dir: Path, seed: int = 0) -> Path:
    """2-layer BERT with MiniLM's WordPiece tokenizer ([CLS] ... [SEP])."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _word_level_tokenizer(first_id: int, bos: bool) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i, word in enumerate(_words(800)):
        vocab.setdefault(word, first_id + i)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def save_tiny_gpt2(path: Path, seed: int = 0) -> Path:
    """2-layer GPT-2 with a word-level tokenizer that adds no special tokens (as GPT-2)."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    tok = _word_level_tokenizer(first_id=3, bos=False)
    cfg = GPT2Config(vocab_size=1024, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    GPT2Model(cfg).save_pretrained(path)
    tok.save_pretrained(path)  # type: ignore[attr-defined]  # PreTrainedTokenizerFast
    return path


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    """2-layer Llama whose tokenizer adds BOS and uses ids above 65,535 (int32 needed)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    tok = _word_level_tokenizer(first_id=70_000, bos=True)
    cfg = LlamaConfig(
        vocab_size=71_000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)  # type: ignore[attr-defined]  # PreTrainedTokenizerFast
    return path
