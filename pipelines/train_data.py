"""The training data of the paper's three experiments: character-level text, text with
random tokens mixed in, and addition written as characters.

Every batch is a pure function of ``(seed, step)``, so a resumed run draws exactly the
batches an uninterrupted one would, with no data-loader state to save.

- **Text** is read from any posctx corpus (``stdlib`` by default), documents joined by a
  blank line, and encoded one character per token with a tokenizer saved beside every
  checkpoint (:func:`char_tokenizer`), or with a local tokenizer folder.
- **Randomization** level 1 replaces the second half of every training window, inputs and
  targets alike, with uniformly random token ids; level 2 replaces all of it; level 0 is
  plain text.
- **Addition** problems are ``a+b=c`` with ``width``-digit operands. ``carry`` writes the
  ordinary sum modulo ``10**width`` (every carry inside the width kept, the last one dropped,
  so that both datasets have the same length); no carry writes each digit's sum modulo 10.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import posctx
from posctx.corpus import open_corpus
from posctx.errors import PosctxError

#: Token id 0 of a character tokenizer: characters unseen in the training text.
UNK = "[UNK]"
#: Characters of an addition problem; the vocabulary of the addition tokenizer.
ADDITION_CHARS = "0123456789+="
#: Topic of a held-out addition problem: how many carries its ordinary sum makes (capped).
MAX_CARRY_TOPIC = 3


def char_tokenizer(chars: str, max_length: int) -> Any:
    """A fast tokenizer with one token per character of ``chars`` (id 0 is ``[UNK]``).

    It is a ``PreTrainedTokenizerFast``, so ``save_pretrained`` writes ``tokenizer.json``
    that ``AutoTokenizer`` (and therefore ``posctx extract --model DIR``) loads offline.

    >>> tok = char_tokenizer("ab =", 16)
    >>> tok("ab a", add_special_tokens=False)["input_ids"], tok.decode([1, 2, 0])
    ([3, 4, 1, 3], ' =[UNK]')
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ordered = sorted(set(chars))
    vocab = {UNK: 0, **{ch: i + 1 for i, ch in enumerate(ordered)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # "(?m)." is any one character, newline included (the regex engine is Oniguruma).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK, model_max_length=max_length
    )


def read_text(corpus: str, max_chars: int, seed: int) -> str:
    """The first ``max_chars`` characters of ``corpus``'s documents (in its seeded order),
    joined by blank lines."""
    source = open_corpus(posctx.CorpusConfig(spec=corpus, seed=seed))
    parts: list[str] = []
    total = 0
    documents = source.documents(seed)
    try:
        for doc in documents:
            parts.append(doc.text)
            total += len(doc.text) + 2
            if total >= max_chars:
                break
    finally:
        close = getattr(documents, "close", None)
        if callable(close):
            close()
    text = "\n\n".join(parts)[:max_chars]
    if len(text) < 1000:
        raise PosctxError(
            f"corpus {corpus!r} has only {len(text)} characters of text: train on a bigger "
            "corpus (a folder of text files, or stdlib)"
        )
    return text


@dataclass(frozen=True)
class TextData:
    """Token ids of a text, split into training and held-out parts (the last tenth)."""

    train: np.ndarray
    held_out: np.ndarray
    vocab_size: int
    #: Token ids random tokens are drawn from (all but ``[UNK]`` for a character tokenizer).
    random_low: int
    #: BLAKE2b of the text: recorded with every checkpoint.
    text_hash: str
    n_chars: int

    def describe(self) -> dict[str, Any]:
        return {
            "train_tokens": int(self.train.size),
            "held_out_tokens": int(self.held_out.size),
            "vocab_size": self.vocab_size,
            "text_chars": self.n_chars,
            "text_blake2b": self.text_hash,
        }


def text_data(text: str, tokenizer: Any, *, char_level: bool) -> TextData:
    """Encode ``text`` once and split it 90/10 into training and held-out token ids."""
    if char_level:  # a dict lookup per character is many times faster than the tokenizer
        vocab = tokenizer.get_vocab()
        ids = np.fromiter((vocab.get(ch, 0) for ch in text), dtype=np.int32, count=len(text))
    else:
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
    cut = int(len(ids) * 0.9)
    return TextData(
        train=ids[:cut],
        held_out=ids[cut:],
        vocab_size=len(tokenizer),
        random_low=1 if char_level else 0,
        text_hash=hashlib.blake2b(text.encode(), digest_size=16).hexdigest(),
        n_chars=len(text),
    )


def batch_rng(seed: int, step: int, purpose: str) -> np.random.Generator:
    """The generator of one step's batch: the same for a resumed run as for one that never
    stopped."""
    salt = int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=4).digest(), "little")
    return np.random.default_rng([seed, step, salt])


def text_batch(
    data: TextData,
    rng: np.random.Generator,
    batch: int,
    block: int,
    level: int,
    *,
    held_out: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)``, each ``(batch, block)``: windows of the text, the targets one
    token ahead, with level 1 or 2 randomization applied to the window before the shift.

    >>> data = text_data("abcdefgh" * 200, char_tokenizer("abcdefgh", 8), char_level=True)
    >>> x, y = text_batch(data, np.random.default_rng(0), 2, 8, level=1)
    >>> bool((x[:, 1:] == y[:, :-1]).all()), x.shape
    (True, (2, 8))
    """
    ids = data.held_out if held_out else data.train
    if len(ids) <= block + 1:
        raise PosctxError(
            f"the {'held-out' if held_out else 'training'} text has {len(ids)} tokens, too few "
            f"for windows of {block + 1}: raise text_chars or lower block_size"
        )
    starts = rng.integers(0, len(ids) - block - 1, size=batch)
    windows = np.stack([ids[s : s + block + 1] for s in starts]).astype(np.int64)
    if level > 0:
        first = 0 if level == 2 else block // 2
        shape = (batch, block + 1 - first)
        windows[:, first:] = rng.integers(data.random_low, data.vocab_size, size=shape)
    return windows[:, :-1], windows[:, 1:]


def addition_problem(a: int, b: int, width: int, carry: bool) -> str:
    """``a+b=c`` with zero-padded ``width``-digit numbers.

    >>> addition_problem(58, 67, 3, carry=True), addition_problem(58, 67, 3, carry=False)
    ('058+067=125', '058+067=015')
    """
    if carry:
        answer = (a + b) % 10**width
    else:
        da, db = f"{a:0{width}d}", f"{b:0{width}d}"
        answer = int("".join(str((int(x) + int(y)) % 10) for x, y in zip(da, db, strict=True)))
    return f"{a:0{width}d}+{b:0{width}d}={answer:0{width}d}"


def carries(a: int, b: int, width: int) -> int:
    """How many carries the ordinary sum of ``a`` and ``b`` makes within ``width`` digits.

    >>> carries(58, 67, 3), carries(11, 22, 3)
    (2, 0)
    """
    count, carry = 0, 0
    for _ in range(width):
        carry = int(a % 10 + b % 10 + carry >= 10)
        count += carry
        a, b = a // 10, b // 10
    return count


def addition_length(width: int) -> int:
    """Characters of one problem: two operands, ``+``, ``=``, the answer."""
    return 3 * width + 2


def random_operands(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """``(n, 2)`` uniform ``width``-digit operands (leading zeros allowed)."""
    return rng.integers(0, 10**width, size=(n, 2), dtype=np.int64)


def encode_chars(texts: Sequence[str], tokenizer: Any) -> np.ndarray:
    """``(n, len)`` ids of equally long texts, one per character."""
    vocab = tokenizer.get_vocab()
    return np.array([[vocab.get(ch, 0) for ch in t] for t in texts], dtype=np.int64)


#: Target id that the loss skips (torch's ``cross_entropy`` default ``ignore_index``).
IGNORE = -100


def addition_batch(
    rng: np.random.Generator,
    batch: int,
    width: int,
    carry: bool,
    tokenizer: Any,
    answer_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` of ``batch`` problems. Every next character is a target, as in
    nanoGPT, or with ``answer_only`` only the answer's digits (the operands are random, so
    only the answer can be learned; the others are :data:`IGNORE`).

    >>> tok = char_tokenizer(ADDITION_CHARS, 8)
    >>> x, y = addition_batch(np.random.default_rng(0), 1, 2, True, tok, answer_only=True)
    >>> x.shape, (y[0] == IGNORE).tolist()
    ((1, 7), [True, True, True, True, True, False, False])
    """
    texts = [
        addition_problem(int(a), int(b), width, carry)
        for a, b in random_operands(rng, batch, width)
    ]
    ids = encode_chars(texts, tokenizer)
    targets = ids[:, 1:].copy()
    if answer_only:
        targets[:, : 2 * width + 1] = IGNORE  # targets before the first answer digit
    return ids[:, :-1], targets


def addition_test_set(seed: int, n_per_topic: int, width: int, carry: bool) -> list[dict[str, str]]:
    """Held-out problems as ``{"text", "topic"}`` rows, ``n_per_topic`` of each carry count
    0 .. ``MAX_CARRY_TOPIC`` (the last meaning that many or more), topics taking turns.

    The topic counts the carries of the *ordinary* sum in both datasets, so carry and no-carry
    models are measured on the same operands with the same labels.
    """
    rng = batch_rng(seed, 0, "addition-test")
    n_topics = min(MAX_CARRY_TOPIC, width) + 1
    found: list[list[tuple[int, int]]] = [[] for _ in range(n_topics)]
    while min(len(f) for f in found) < n_per_topic:
        for a, b in random_operands(rng, 4096, width):
            k = min(carries(int(a), int(b), width), n_topics - 1)
            if len(found[k]) < n_per_topic:
                found[k].append((int(a), int(b)))
    rows = []
    for i in range(n_per_topic):
        for k in range(n_topics):
            a, b = found[k][i]
            label = f"{k}+ carries" if k == n_topics - 1 and k < width else f"{k} carries"
            rows.append({"text": addition_problem(a, b, width, carry), "topic": label})
    return rows


def write_jsonl(rows: Sequence[dict[str, str]], path: Path) -> Path:
    """Rows as a JSON-lines table (a posctx corpus), written whole then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    partial.replace(path)
    return path


__all__ = [
    "ADDITION_CHARS",
    "IGNORE",
    "MAX_CARRY_TOPIC",
    "TextData",
    "UNK",
    "addition_batch",
    "addition_length",
    "addition_problem",
    "addition_test_set",
    "batch_rng",
    "carries",
    "char_tokenizer",
    "encode_chars",
    "random_operands",
    "read_text",
    "text_batch",
    "text_data",
    "write_jsonl",
]
