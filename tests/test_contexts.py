"""Cutting token contexts: exact windows, special tokens, quotas, errors, determinism, streaming."""

from __future__ import annotations

import random
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from pydoc_data.topics import topics as pydoc_topics
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from posctx.config import CorpusConfig
from posctx.corpus import ContextPlan, Document, open_corpus, sample_contexts
from posctx.corpus.contexts import allocate_quotas
from posctx.errors import CorpusError, PosctxError

CLS, SEP, DOC_SEP = 1, 2, 3  # below every character code used in the texts


def chars(text: str) -> list[int]:
    """Character-level encoding: decoding a window back gives the exact source text."""
    return [ord(ch) for ch in text]


def decode(ids: Sequence[int]) -> str:
    return "".join(chr(int(i)) for i in ids)


class ListCorpus:
    """An in-memory corpus whose stream fails if read past ``fail_after`` documents."""

    def __init__(
        self,
        docs: Sequence[Document],
        topics: tuple[str, ...] | None = None,
        *,
        known: bool = True,
        fail_after: int | None = None,
        name: str = "fake",
    ) -> None:
        self.name = name
        self.docs = list(docs)
        order = list(dict.fromkeys(d.topic for d in docs))
        self.topics = (topics or tuple(order)) if known else None
        self.fail_after = fail_after
        self.read = 0

    def documents(self, seed: int) -> Iterator[Document]:
        for i, doc in enumerate(self.docs):
            if self.fail_after is not None and i >= self.fail_after:
                raise AssertionError(f"read document {i}, past the {self.fail_after} needed")
            self.read = i + 1
            yield doc

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(n))


def make_docs(topics: dict[str, list[int]], seed: int = 0) -> list[Document]:
    """Documents of the given lengths per topic, topics taking turns like the real sources."""
    rng = random.Random(seed)
    per_topic = {
        topic: [Document(_text(rng, n), topic, f"{topic}/{i}.txt") for i, n in enumerate(lengths)]
        for topic, lengths in topics.items()
    }
    docs: list[Document] = []
    for i in range(max(len(v) for v in per_topic.values())):
        docs.extend(v[i] for v in per_topic.values() if i < len(v))
    return docs


def _sample(corpus: Any, **kwargs: Any) -> ContextPlan:
    kwargs.setdefault("encode", chars)
    encode = kwargs.pop("encode")
    return sample_contexts(corpus, encode, **kwargs)


# --- shape, content and special tokens --------------------------------------------------


def test_plan_shapes_and_dtypes() -> None:
    corpus = ListCorpus(make_docs({"a": [300, 200], "b": [500]}))
    plan = _sample(corpus, n_contexts=8, length=20, prefix_ids=[CLS], suffix_ids=[SEP])
    assert plan.token_ids.shape == (8, 20) and plan.token_ids.dtype == np.int32
    assert plan.topic.dtype.kind == "U" and plan.source.dtype.kind == "U"
    assert plan.offset.dtype == np.int64 and plan.offset.shape == (8,)
    assert plan.n_special == (1, 1) and plan.n_contexts == 8 and plan.length == 20


def test_special_tokens_only_at_the_ends() -> None:
    corpus = ListCorpus(make_docs({"a": [80] * 10, "b": [50] * 10}))
    plan = _sample(
        corpus,
        n_contexts=12,
        length=16,
        prefix_ids=[CLS],
        suffix_ids=[SEP],
        separator_ids=[DOC_SEP],
    )
    specials = np.isin(plan.token_ids, [CLS, SEP])
    assert (plan.token_ids[:, 0] == CLS).all() and (plan.token_ids[:, -1] == SEP).all()
    assert not specials[:, 1:-1].any()
    assert (plan.token_ids[:, 1:-1] == DOC_SEP).any()  # windows do cross document boundaries


def test_two_prefix_tokens_and_no_suffix() -> None:
    corpus = ListCorpus(make_docs({"a": [200]}))
    plan = _sample(corpus, n_contexts=3, length=10, prefix_ids=[CLS, 5])
    assert plan.n_special == (2, 0)
    assert (plan.token_ids[:, :2] == [CLS, 5]).all()
    assert not np.isin(plan.token_ids[:, 2:], [CLS, 5]).any()


@pytest.mark.parametrize("separator", [[], [DOC_SEP], [DOC_SEP, DOC_SEP + 1]])
def test_windows_are_exact_slices_of_the_topic_stream(separator: list[int]) -> None:
    docs = make_docs({"a": [37, 5, 61, 80, 19, 44], "b": [150, 3, 90]}, seed=3)
    corpus = ListCorpus(docs)
    length = 14
    plan = _sample(corpus, n_contexts=16, length=length, separator_ids=separator, balance=False)
    for topic in ("a", "b"):
        # rebuild the topic stream and where each document starts in it
        stream: list[int] = []
        starts: dict[str, int] = {}
        for doc in (d for d in docs if d.topic == topic):
            if stream:
                stream.extend(separator)
            starts[doc.source] = len(stream)
            stream.extend(chars(doc.text))
        rows = np.flatnonzero(plan.topic == topic)
        positions = sorted(starts[plan.source[r]] + int(plan.offset[r]) for r in rows)
        for r in rows:
            doc = next(d for d in docs if d.source == plan.source[r])
            offset = int(plan.offset[r])
            assert 0 <= offset < len(doc.text)  # never starts inside a separator
            begin = starts[doc.source] + offset
            assert plan.token_ids[r].tolist() == stream[begin : begin + length]
        assert all(
            b - a >= length for a, b in zip(positions, positions[1:], strict=False)
        )  # no overlap


def test_window_decodes_to_the_source_text_at_its_offset() -> None:
    docs = make_docs({"a": [400], "b": [400]}, seed=5)
    plan = _sample(ListCorpus(docs), n_contexts=10, length=25, prefix_ids=[CLS], suffix_ids=[SEP])
    text = {d.source: d.text for d in docs}
    for ids, source, offset in zip(plan.token_ids, plan.source, plan.offset, strict=True):
        assert decode(ids[1:-1]) == text[str(source)][offset : offset + 23]


def test_gaps_are_at_most_a_quarter_window() -> None:
    plan = _sample(ListCorpus(make_docs({"a": [5000]})), n_contexts=40, length=40)
    starts = np.sort(plan.offset)
    steps = np.diff(starts)
    assert steps.min() >= 40 and steps.max() <= 50
    assert len(set(steps.tolist())) > 1  # the gaps are random, not a fixed stride


def test_token_ids_above_uint16_survive() -> None:
    def big(text: str) -> list[int]:
        return [70_000 + ord(ch) for ch in text]

    plan = _sample(
        ListCorpus(make_docs({"a": [300]})),
        encode=big,
        n_contexts=4,
        length=12,
        prefix_ids=[100_000],
        suffix_ids=[2**31 - 1],
    )
    assert plan.token_ids.dtype == np.int32
    assert plan.token_ids[:, 1:-1].min() > 70_000
    assert (plan.token_ids[:, 0] == 100_000).all() and (plan.token_ids[:, -1] == 2**31 - 1).all()


def test_encoded_ids_out_of_range_are_refused() -> None:
    with pytest.raises(CorpusError, match="token ids outside"):
        _sample(
            ListCorpus(make_docs({"a": [300]})),
            encode=lambda s: [-1] * len(s),
            n_contexts=1,
            length=4,
        )
    with pytest.raises(CorpusError, match="prefix_ids has token ids outside"):
        _sample(ListCorpus(make_docs({"a": [300]})), n_contexts=1, length=4, prefix_ids=[2**31])


# --- quotas -----------------------------------------------------------------------------


def test_balanced_quotas_split_evenly_with_a_seeded_remainder() -> None:
    corpus = ListCorpus(make_docs({"a": [1000], "b": [1000], "c": [1000]}))
    counts = Counter(_sample(corpus, n_contexts=10, length=20).topic.tolist())
    assert sorted(counts.values()) == [3, 3, 4]
    plans = [_sample(corpus, n_contexts=10, length=20, seed=s) for s in range(12)]
    winners = {Counter(plan.topic.tolist()).most_common()[0][0] for plan in plans}
    assert len(winners) > 1  # the extra context does not always go to the same topic


def test_more_topics_than_contexts() -> None:
    corpus = ListCorpus(make_docs({t: [100] for t in "abcde"}))
    plan = _sample(corpus, n_contexts=3, length=10)
    assert sorted(Counter(plan.topic.tolist()).values()) == [1, 1, 1]


def test_small_topic_fails_balance_naming_topic_and_fix() -> None:
    corpus = ListCorpus(make_docs({"big": [1000], "small": [45]}))
    message = r"topic 'small' has 2 windows of 20 tokens, needs 5.*--no-balance"
    with pytest.raises(CorpusError, match=message):
        _sample(corpus, n_contexts=10, length=20)


def test_unbalanced_lets_other_topics_fill_in() -> None:
    corpus = ListCorpus(make_docs({"big": [1000], "small": [45], "mid": [1000]}))
    plan = _sample(corpus, n_contexts=12, length=20, balance=False)
    assert Counter(plan.topic.tolist()) == {"small": 2, "big": 5, "mid": 5}


def test_unbalanced_takes_the_even_split_when_every_topic_has_enough() -> None:
    corpus = ListCorpus(make_docs({"a": [2000], "b": [300]}))
    plan = _sample(corpus, n_contexts=8, length=20, balance=False)
    assert Counter(plan.topic.tolist()) == {"a": 4, "b": 4}


@pytest.mark.parametrize("balance", [True, False])
def test_topics_discovered_while_streaming(balance: bool) -> None:
    corpus = ListCorpus(make_docs({"x": [500, 500], "y": [400], "z": [900]}), known=False)
    plan = _sample(corpus, n_contexts=9, length=30, balance=balance)
    assert Counter(plan.topic.tolist()) == {"x": 3, "y": 3, "z": 3}
    assert corpus.read == len(corpus.docs)  # must read all: a new topic could still appear


def test_discovered_topics_unbalanced_fill() -> None:
    corpus = ListCorpus(make_docs({"x": [2000], "y": [70]}), known=False)
    plan = _sample(corpus, n_contexts=9, length=30, balance=False)
    assert Counter(plan.topic.tolist()) == {"x": 7, "y": 2}
    with pytest.raises(CorpusError, match="topic 'y' has 2 windows"):
        _sample(corpus, n_contexts=9, length=30, balance=True)


@given(
    capacity=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    n=st.integers(1, 60),
    seed=st.integers(0, 1000),
)
def test_allocate_quotas_is_as_even_as_capacity_allows(
    capacity: list[int], n: int, seed: int
) -> None:
    priority = list(range(len(capacity)))
    random.Random(seed).shuffle(priority)
    quotas = allocate_quotas(capacity, n, priority)
    assert sum(quotas) == min(n, sum(capacity))
    assert all(0 <= q <= c for q, c in zip(quotas, capacity, strict=True))
    open_quotas = [q for q, c in zip(quotas, capacity, strict=True) if q < c]
    if open_quotas:  # a topic left below capacity is never more than one behind any other
        assert max(quotas) - min(open_quotas) <= 1


# --- errors -----------------------------------------------------------------------------


def test_corpus_smaller_than_one_context() -> None:
    corpus = ListCorpus(make_docs({"a": [10], "b": [5]}), name="tiny")
    message = r"corpus 'tiny' has 15 tokens, fewer than one context of 20 content tokens: use a"
    with pytest.raises(CorpusError, match=message):
        _sample(corpus, n_contexts=2, length=22, prefix_ids=[CLS], suffix_ids=[SEP])


def test_too_few_windows_in_total() -> None:
    corpus = ListCorpus(make_docs({"a": [100], "b": [100]}), name="small")
    message = r"corpus 'small' has only \d windows of 20 content tokens, fewer than --contexts 50: "
    with pytest.raises(CorpusError, match=message + "lower --contexts"):
        _sample(corpus, n_contexts=50, length=20, balance=False)


def test_length_without_room_for_content() -> None:
    with pytest.raises(CorpusError, match="--length 2 leaves no content tokens.*--length 3"):
        _sample(
            ListCorpus(make_docs({"a": [100]})),
            n_contexts=1,
            length=2,
            prefix_ids=[CLS],
            suffix_ids=[SEP],
        )
    with pytest.raises(CorpusError, match="--contexts must be >= 1"):
        _sample(ListCorpus(make_docs({"a": [100]})), n_contexts=0, length=5)


def test_document_of_an_undeclared_topic_is_an_error() -> None:
    corpus = ListCorpus(make_docs({"a": [100], "b": [100]}), topics=("a",))
    with pytest.raises(CorpusError, match="topic 'b', which is not one of its topics"):
        _sample(corpus, n_contexts=20, length=10)


# --- determinism and streaming ----------------------------------------------------------


def _plans_equal(p: ContextPlan, q: ContextPlan) -> bool:
    return (
        np.array_equal(p.token_ids, q.token_ids)
        and np.array_equal(p.topic, q.topic)
        and np.array_equal(p.source, q.source)
        and np.array_equal(p.offset, q.offset)
        and p.n_special == q.n_special
    )


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    corpus = ListCorpus(make_docs({"a": [900, 700], "b": [1200]}))
    kwargs: dict[str, Any] = dict(
        n_contexts=20, length=16, prefix_ids=[CLS], separator_ids=[DOC_SEP]
    )
    first = _sample(corpus, seed=7, **kwargs)
    assert _plans_equal(first, _sample(corpus, seed=7, **kwargs))
    other = _sample(corpus, seed=8, **kwargs)
    assert not _plans_equal(first, other)


def test_context_order_mixes_topics() -> None:
    corpus = ListCorpus(make_docs({"a": [3000], "b": [3000]}))
    topics = _sample(corpus, n_contexts=40, length=20).topic.tolist()
    assert topics[:20] != ["a"] * 20 and topics != sorted(topics)


def test_stops_reading_once_every_topic_has_its_quota() -> None:
    docs = make_docs({"a": [300] * 50, "b": [300] * 50})
    # 4 contexts of 50 tokens per topic fit in the first document of each topic
    corpus = ListCorpus(docs, fail_after=2)
    plan = _sample(corpus, n_contexts=8, length=50)
    assert corpus.read == 2 and plan.n_contexts == 8


def test_unbalanced_known_topics_also_stop_early() -> None:
    corpus = ListCorpus(make_docs({"a": [300] * 50, "b": [300] * 50}), fail_after=2)
    assert _sample(corpus, n_contexts=8, length=50, balance=False).n_contexts == 8


def test_only_needed_documents_are_tokenised() -> None:
    encoded: list[str] = []

    def spy(text: str) -> list[int]:
        encoded.append(text)
        return chars(text)

    docs = make_docs({"a": [100] * 5, "b": [1000] * 5})
    _sample(ListCorpus(docs), encode=spy, n_contexts=10, length=20)
    # topic b is full after its first document; its later documents are read but not encoded
    assert sum(1 for t in encoded if t in {d.text for d in docs if d.topic == "b"}) == 1


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    _sample(ListCorpus(make_docs({"a": [500]})), n_contexts=5, length=20, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "5/5" in captured.err


def test_stdlib_corpus_end_to_end() -> None:
    corpus = open_corpus(CorpusConfig(spec="stdlib"))
    plan = _sample(
        corpus,
        n_contexts=30,
        length=64,
        prefix_ids=[CLS],
        suffix_ids=[SEP],
        separator_ids=[DOC_SEP],
        seed=1,
    )
    assert Counter(plan.topic.tolist()) == {"reference": 10, "docstrings": 10, "code": 10}
    assert _plans_equal(
        plan,
        _sample(
            corpus,
            n_contexts=30,
            length=64,
            prefix_ids=[CLS],
            suffix_ids=[SEP],
            separator_ids=[DOC_SEP],
            seed=1,
        ),
    )
    root = Path(sysconfig.get_paths()["stdlib"])
    for ids, source, offset in zip(plan.token_ids, plan.source, plan.offset, strict=True):
        head = decode(ids[1:-1]).split(chr(DOC_SEP))[0]  # the part inside the starting document
        if source.startswith("pydoc:"):
            text = pydoc_topics[source[len("pydoc:") :]]
        elif source.startswith("module:"):
            continue  # docstring documents are assembled, not read verbatim
        else:
            text = (root / source).read_text(encoding="utf-8", errors="replace")
        assert text[offset : offset + len(head)] == head


# --- tokenising documents in batches ----------------------------------------------------


@pytest.mark.parametrize("read_ahead", [1, 3, 256])
@pytest.mark.parametrize("balance", [True, False])
def test_batch_encoding_gives_the_same_plan_and_skips_full_topics(
    read_ahead: int, balance: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import posctx.corpus.contexts as contexts

    monkeypatch.setattr(contexts, "READ_AHEAD_DOCUMENTS", read_ahead)
    docs = make_docs({"a": [90] * 30, "b": [40] * 30, "c": [300] * 3}, seed=3)
    calls: list[list[str]] = []

    def encode_batch(texts: list[str]) -> list[list[int]]:
        calls.append(texts)
        return [chars(t) for t in texts]

    kwargs: dict[str, Any] = dict(n_contexts=12, length=32, seed=5, balance=balance)
    one = _sample(ListCorpus(docs), **kwargs)
    batched = _sample(ListCorpus(docs), encode_batch=encode_batch, **kwargs)
    for name in ("token_ids", "topic", "source", "offset"):
        np.testing.assert_array_equal(getattr(one, name), getattr(batched, name))
    assert calls and max(len(c) for c in calls) <= read_ahead
    # What is read ahead past a topic's quota is encoded at most once per window, never again.
    encoded = [t for c in calls for t in c]
    assert len(encoded) == len(set(encoded)) <= len(docs)


def test_a_loaded_tokenizer_encodes_a_batch_as_one_text_at_a_time(minilm_dir: Path) -> None:
    from posctx.config import ModelConfig
    from posctx.model import load_model

    loaded = load_model(ModelConfig(name=str(minilm_dir)))
    texts = [pydoc_topics["assert"], pydoc_topics["if"], ""]
    assert loaded.encode_batch(texts) == [loaded.encode(t) for t in texts]
    assert loaded.encode_batch([]) == []


# --- document-aligned windows -------------------------------------------------------------


def test_document_windows_start_each_context_at_its_document_start() -> None:
    docs = make_docs({"a": [12, 5, 30, 12], "b": [11, 40, 3]})
    texts = {d.source: d.text for d in docs}
    plan = _sample(ListCorpus(docs), n_contexts=4, length=12, prefix_ids=[CLS], windows="documents")
    assert plan.token_ids.shape == (4, 12)
    assert plan.offset.tolist() == [0, 0, 0, 0]
    # Documents shorter than the 11 content tokens (a/1, b/2) are skipped; a long one
    # gives its first 11 tokens only, once.
    assert sorted(plan.source.tolist()) == ["a/0.txt", "a/2.txt", "b/0.txt", "b/1.txt"]
    for ids, source in zip(plan.token_ids, plan.source, strict=True):
        assert ids[0] == CLS and decode(ids[1:]) == texts[str(source)][:11]


def test_document_windows_too_few_documents_names_them() -> None:
    corpus = ListCorpus(make_docs({"a": [20, 3, 20], "b": [20, 20, 20]}), name="problems")
    message = r"topic 'a' has 2 documents of >= 20 tokens, needs 3.*--no-balance"
    with pytest.raises(CorpusError, match=message):
        _sample(corpus, n_contexts=6, length=20, windows="documents")
    message = r"has only 5 documents of >= 20 content tokens, fewer than --contexts 6"
    with pytest.raises(CorpusError, match=message):
        _sample(corpus, n_contexts=6, length=20, windows="documents", balance=False)


def test_windows_setting_is_validated() -> None:
    with pytest.raises(PosctxError, match="--windows must be one of stream, documents, got 'x'"):
        CorpusConfig(windows="x")
