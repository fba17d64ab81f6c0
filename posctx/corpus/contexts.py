"""Cutting fixed-length token contexts from a corpus, streaming one document at a time.

Each topic is one token stream: its documents, encoded without special tokens, joined by
separator tokens. Windows of ``L`` content tokens are cut from each stream in order, with a
seeded random gap between consecutive windows, and wrapped in the model's special tokens::

    topic stream   |doc 0 tokens|sep|doc 1 tokens ...|sep|doc 2 ...
    windows        [---- L ----]  gap  [---- L ----] gap [---- L ----]
    context        prefix + window + suffix            (T = len(prefix) + L + len(suffix))

With ``windows="documents"`` each context is instead the first ``L`` tokens of one document
(documents shorter than ``L`` are skipped), so that position ``t`` means the same place in
every context: the ``=`` of an addition problem, the slot of a prompt template.

Only the tail of each stream that the next window still needs is kept in memory, and when
the topics are known up front reading stops as soon as every topic has its quota.
"""

from __future__ import annotations

import hashlib
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from posctx.corpus.documents import Document
from posctx.corpus.sources import Corpus
from posctx.errors import CorpusError
from posctx.types import WINDOWS, IntArray

_MAX_ID = int(np.iinfo(np.int32).max)
_FIX_TOPIC = "lower --contexts, shorten --length, or pass --no-balance"
_FIX_TOTAL = "lower --contexts, shorten --length, or use a bigger corpus"


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: compare fields explicitly
class ContextPlan:
    """Which token contexts to run through the model, and where each one came from.

    Parameters
    ----------
    token_ids
        ``(C, T)`` int32 token ids: prefix special tokens, ``L`` content tokens, suffix
        special tokens. int32 because vocabularies outgrow uint16.
    topic, source
        ``(C,)`` unicode arrays: each context's topic and the document its window starts in.
    offset
        ``(C,)`` int64 token offset of the window's first content token in that document.
    n_special
        ``(len(prefix_ids), len(suffix_ids))``: content positions are
        ``n_special[0] : T - n_special[1]``.
    """

    token_ids: IntArray
    topic: np.ndarray
    source: np.ndarray
    offset: IntArray
    n_special: tuple[int, int]

    def __post_init__(self) -> None:
        if self.token_ids.ndim != 2 or self.token_ids.dtype != np.int32:
            raise ValueError(
                f"token_ids must be (C, T) int32, got {self.token_ids.dtype} {self.token_ids.shape}"
            )
        n = self.token_ids.shape[0]
        for name in ("topic", "source", "offset"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
        if sum(self.n_special) >= self.token_ids.shape[1]:
            raise ValueError(f"n_special {self.n_special} leaves no content in T={self.length}")

    @property
    def n_contexts(self) -> int:
        """Number of contexts C."""
        return int(self.token_ids.shape[0])

    @property
    def length(self) -> int:
        """Tokens per context T, special tokens included."""
        return int(self.token_ids.shape[1])


def _stable_hash(text: str) -> int:
    # Python's hash() of a str changes between processes; SHA-256 does not.
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator for one purpose (a topic's gaps, the context order...) under one seed."""
    return np.random.default_rng([seed, _stable_hash(purpose)])


def _priority(seed: int, n_topics: int) -> list[int]:
    """Seeded order in which topics receive the contexts that do not divide evenly."""
    return [int(i) for i in _rng(seed, "order:quota").permutation(n_topics)]


def _as_ids(ids: Sequence[int] | IntArray, what: str) -> IntArray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise CorpusError(
            f"{what} must be a flat sequence of integer token ids, got {arr.dtype} {arr.shape}"
        )
    if int(arr.min()) < 0 or int(arr.max()) > _MAX_ID:
        raise CorpusError(
            f"{what} has token ids outside [0, {_MAX_ID}]: {int(arr.min())}..{int(arr.max())}"
        )
    return arr.astype(np.int64, copy=False)


def allocate_quotas(capacity: Sequence[int], n: int, priority: Sequence[int]) -> list[int]:
    """Split ``n`` contexts over topics as evenly as ``capacity`` allows (water filling).

    Every topic is filled to the same level, or to its ``capacity`` if lower; the contexts
    left over go one each to the topics that can take them, in ``priority`` order. With
    unlimited capacity this is the balanced split: ``n // k`` each, the remainder one each to
    the first topics in ``priority``.

    Examples
    --------
    >>> allocate_quotas([10, 10, 10], 8, [2, 0, 1])
    [3, 2, 3]
    >>> allocate_quotas([1, 10, 10], 8, [0, 1, 2])
    [1, 4, 3]
    """
    if n >= sum(capacity):
        return list(capacity)
    # The highest level every topic can be filled to without exceeding n (binary search).
    low, high = 0, max(capacity)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(c, mid) for c in capacity) <= n:
            low = mid
        else:
            high = mid - 1
    quotas = [min(c, low) for c in capacity]
    rest = n - sum(quotas)
    # Fewer than the topics above the level remain: one each, in priority order.
    for i in priority:
        if rest == 0:
            break
        if capacity[i] > low:
            quotas[i] += 1
            rest -= 1
    return quotas


class _TopicStream:
    """One topic's token stream, cut into windows as its documents arrive.

    Positions are offsets into the whole topic stream; ``tail`` holds the tokens from
    ``tail_start`` (never past the next window start) to ``end``.
    """

    def __init__(
        self,
        length: int,
        separator: IntArray,
        rng: np.random.Generator,
        cap: int,
        documents: bool = False,
    ) -> None:
        self.length = length
        self.documents = documents
        self.separator = separator
        self.rng = rng
        self.cap = cap
        self.tail: IntArray = np.empty(0, dtype=np.int64)
        self.tail_start = 0
        self.end = 0
        self.next_start = 0
        self.n_tokens = 0
        self.n_skipped = 0  # documents never tokenised because the stream was full
        # (start, stop, source) of documents that end after next_start
        self.docs: deque[tuple[int, int, str]] = deque()
        self.windows: list[IntArray] = []
        self.sources: list[str] = []
        self.offsets: list[int] = []

    @property
    def full(self) -> bool:
        return len(self.windows) >= self.cap

    def feed(self, tokens: IntArray, source: str) -> None:
        if self.documents:  # one window per document, at its start; no stream to keep
            self.n_tokens += len(tokens)
            if len(tokens) >= self.length:
                self.windows.append(tokens[: self.length].astype(np.int32))
                self.sources.append(source)
                self.offsets.append(0)
            return
        pieces = [self.tail]
        start = self.end
        if self.end > 0 and len(self.separator):
            pieces.append(self.separator)
            start += len(self.separator)
        pieces.append(tokens)
        self.tail = np.concatenate(pieces)
        self.end = start + len(tokens)
        self.n_tokens += len(tokens)
        self.docs.append((start, self.end, source))
        self._cut()

    def _cut(self) -> None:
        gap_max = self.length // 4
        while not self.full:
            while self.docs and self.docs[0][1] <= self.next_start:
                self.docs.popleft()
            if not self.docs:
                break
            doc_start, _, source = self.docs[0]
            # A start inside a separator moves to the next document, so that every window
            # starts on document text and its offset is a position in that document.
            self.next_start = max(self.next_start, doc_start)
            if self.next_start + self.length > self.end:
                break
            i = self.next_start - self.tail_start
            self.windows.append(self.tail[i : i + self.length].astype(np.int32))
            self.sources.append(source)
            self.offsets.append(self.next_start - doc_start)
            self.next_start += self.length + int(self.rng.integers(0, gap_max + 1))
        if self.full:  # no more windows will be cut: free the tail (a long document's rest)
            self.tail = self.tail[:0]
            self.tail_start = self.end
            return
        drop = min(self.next_start, self.end) - self.tail_start
        if drop > 0:
            self.tail = self.tail[drop:]
            self.tail_start += drop


def _collect(
    corpus: Corpus,
    encode: Callable[[str], Sequence[int]],
    *,
    n_contexts: int,
    content: int,
    separator: IntArray,
    seed: int,
    balance: bool,
    progress: bool,
    encode_batch: Callable[[list[str]], Sequence[Sequence[int]]] | None = None,
    aligned: bool = False,
) -> dict[str, _TopicStream]:
    """Stream the corpus into per-topic windows until every quota is met or the corpus ends."""
    known = corpus.topics
    targets: dict[str, int] | None = None
    if known is not None:
        quotas = allocate_quotas([n_contexts] * len(known), n_contexts, _priority(seed, len(known)))
        targets = dict(zip(known, quotas, strict=True))

    def new_stream(topic: str) -> _TopicStream:
        # Balanced with known topics: nothing beyond the quota is ever used. Otherwise keep up
        # to n_contexts per topic, enough for any split decided at the end.
        cap = targets[topic] if (balance and targets is not None) else n_contexts
        return _TopicStream(content, separator, _rng(seed, f"gaps:{topic}"), cap, aligned)

    streams = {topic: new_stream(topic) for topic in known or ()}
    pending = sum(1 for q in (targets or {}).values() if q > 0)
    counted = 0
    bar = tqdm(
        total=n_contexts,
        disable=not progress,
        file=sys.stderr,
        unit="context",
        desc=f"contexts from {corpus.name}",
    )
    documents = corpus.documents(seed)
    try:
        for doc, encoded in _encoded(documents, streams, encode_batch):
            stream = streams.get(doc.topic)
            if stream is None:
                if known is not None:
                    raise CorpusError(
                        f"corpus {corpus.name!r} gave a document of topic {doc.topic!r}, "
                        f"which is not one of its topics {list(known)}"
                    )
                stream = streams[doc.topic] = new_stream(doc.topic)
            if stream.full:
                stream.n_skipped += 1  # still read (it is a stream), but never tokenised
                continue
            target = targets[doc.topic] if targets is not None else n_contexts
            before = len(stream.windows)
            ids = encode(doc.text) if encoded is None else encoded
            tokens = _as_ids(ids, f"encode() of {doc.source!r}")
            if len(tokens):
                stream.feed(tokens, doc.source)
            after = len(stream.windows)
            gained = min(after, target) - min(before, target)
            bar.update(min(n_contexts, counted + gained) - min(n_contexts, counted))
            counted += gained
            if targets is not None and before < target <= after:
                pending -= 1
                if pending == 0:
                    break  # every topic has its quota: read no further
    finally:
        close = getattr(documents, "close", None)
        if callable(close):
            close()
        bar.close()
    return streams


#: Documents read ahead and tokenised in one call when a batch encoder is given.
READ_AHEAD_DOCUMENTS = 256
#: ... or fewer, once their text reaches this many characters (bounded memory).
READ_AHEAD_CHARS = 8_000_000


def _encoded(
    documents: Iterable[Document],
    streams: Mapping[str, _TopicStream],
    encode_batch: Callable[[list[str]], Sequence[Sequence[int]]] | None,
) -> Iterator[tuple[Document, Sequence[int] | None]]:
    """The documents, each with its token ids when ``encode_batch`` is given (else ``None``).

    Documents are read ahead in windows and tokenised in one call (a fast tokenizer encodes a
    batch on all cores). A document of a topic whose quota is met is not tokenised; one that
    meets it within the window was tokenised for nothing, which changes no result: encoding is
    a pure function of the text, and what is used is decided document by document as before.
    """
    if encode_batch is None:
        for doc in documents:
            yield doc, None
        return
    window: list[Document] = []
    chars = 0
    for doc in documents:
        window.append(doc)
        chars += len(doc.text)
        if len(window) >= READ_AHEAD_DOCUMENTS or chars >= READ_AHEAD_CHARS:
            yield from _encode_window(window, streams, encode_batch)
            window, chars = [], 0
    yield from _encode_window(window, streams, encode_batch)


def _encode_window(
    window: list[Document],
    streams: Mapping[str, _TopicStream],
    encode_batch: Callable[[list[str]], Sequence[Sequence[int]]],
) -> Iterator[tuple[Document, Sequence[int] | None]]:
    wanted = [i for i, doc in enumerate(window) if not _full(streams, doc.topic)]
    ids = encode_batch([window[i].text for i in wanted]) if wanted else []
    encoded: dict[int, Sequence[int]] = dict(zip(wanted, ids, strict=True))
    for i, doc in enumerate(window):
        # A skipped document goes on unencoded: its topic is full, so it is never tokenised.
        yield doc, encoded.get(i)


def _full(streams: Mapping[str, _TopicStream], topic: str) -> bool:
    stream = streams.get(topic)
    return stream is not None and stream.full


def sample_contexts(
    corpus: Corpus,
    encode: Callable[[str], Sequence[int]],
    *,
    n_contexts: int,
    length: int,
    prefix_ids: Sequence[int] = (),
    suffix_ids: Sequence[int] = (),
    separator_ids: Sequence[int] = (),
    seed: int = 0,
    balance: bool = True,
    windows: str = "stream",
    progress: bool = False,
    encode_batch: Callable[[list[str]], Sequence[Sequence[int]]] | None = None,
) -> ContextPlan:
    """Cut ``n_contexts`` contexts of ``length`` tokens from a corpus, deterministically.

    Parameters
    ----------
    corpus
        The document source; :meth:`Corpus.documents` is consumed lazily, one document at a
        time, and abandoned as soon as every topic has its quota (when topics are known).
    encode
        Text -> token ids, without special tokens.
    n_contexts, length
        Number of contexts C and tokens per context T, special tokens included.
    prefix_ids, suffix_ids
        Special tokens put before and after each window (e.g. [CLS] and [SEP]); nothing
        special ever appears mid-context.
    separator_ids
        Tokens put between consecutive documents of a topic stream (windows may cross them).
    seed
        Seeds document order, window gaps, remainder quotas and the final context order.
    balance
        Take the same number of contexts from every topic (the remainder going one each to
        topics in a seeded order); otherwise topics that run out leave the rest to others.
    windows
        ``"stream"``: windows anywhere in each topic's stream. ``"documents"``: the first
        ``length`` tokens (special tokens aside) of each document long enough, one per
        document, in document order; ``offset`` is then 0 for every context.
    progress
        Show a progress bar of contexts collected on stderr.
    encode_batch
        Texts -> their token ids, in one call (a fast tokenizer's batch mode, on all cores):
        documents are then read ahead a window at a time and tokenised together. The plan is
        the same as with ``encode`` alone.

    Returns
    -------
    ContextPlan
        Contexts in a seeded random order, so that every storage chunk mixes topics.

    Raises
    ------
    CorpusError
        ``length`` leaves no room for content, the corpus has fewer tokens than one context
        or fewer windows than ``n_contexts``, or (balanced) a topic has too few windows.

    Examples
    --------
    >>> from posctx.corpus.sources import Document
    >>> class Tiny:
    ...     name, topics = "tiny", ("a", "b")
    ...     def documents(self, seed):
    ...         yield Document("abcdefgh" * 4, "a", "a.txt")
    ...         yield Document("12345678" * 4, "b", "b.txt")
    ...     def describe(self):
    ...         return {}
    >>> plan = sample_contexts(Tiny(), lambda s: [ord(c) for c in s], n_contexts=4, length=6,
    ...                        prefix_ids=[1], suffix_ids=[2])
    >>> plan.token_ids.shape, plan.token_ids.dtype, sorted(plan.topic.tolist())
    ((4, 6), dtype('int32'), ['a', 'a', 'b', 'b'])
    >>> bool((plan.token_ids[:, 0] == 1).all() and (plan.token_ids[:, -1] == 2).all())
    True
    """
    prefix = _as_ids(prefix_ids, "prefix_ids")
    suffix = _as_ids(suffix_ids, "suffix_ids")
    separator = _as_ids(separator_ids, "separator_ids")
    if n_contexts < 1:
        raise CorpusError(f"--contexts must be >= 1, got {n_contexts}")
    content = length - len(prefix) - len(suffix)
    if content < 1:
        raise CorpusError(
            f"--length {length} leaves no content tokens after {len(prefix)} leading and "
            f"{len(suffix)} trailing special tokens: use --length "
            f"{len(prefix) + len(suffix) + 1} or more"
        )
    if corpus.topics is not None and not corpus.topics:
        raise CorpusError(f"corpus {corpus.name!r} has no topics")
    if windows not in WINDOWS:
        raise CorpusError(f"windows must be one of {', '.join(WINDOWS)}, got {windows!r}")
    documents = windows == "documents"
    # What a window is, in the messages below.
    unit = f"documents of >= {content} tokens" if documents else f"windows of {content} tokens"

    streams = _collect(
        corpus,
        encode,
        n_contexts=n_contexts,
        content=content,
        separator=separator,
        seed=seed,
        balance=balance,
        progress=progress,
        encode_batch=encode_batch,
        aligned=documents,
    )
    topics = list(streams)
    available = [len(streams[t].windows) for t in topics]
    priority = _priority(seed, len(topics))
    if sum(available) < n_contexts:
        n_tokens = sum(s.n_tokens for s in streams.values())
        # Token counts are only complete when no document was skipped as surplus.
        if n_tokens < content and not documents and not any(s.n_skipped for s in streams.values()):
            raise CorpusError(
                f"corpus {corpus.name!r} has {n_tokens} tokens, fewer than one context of "
                f"{content} content tokens: use a shorter --length or a bigger corpus"
            )
        # Counts are capped at n_contexts per topic, so a total short of n_contexts is exact
        # unless balanced known topics were capped at their quotas (reported per topic below).
        if not (balance and corpus.topics is not None):
            raise CorpusError(
                f"corpus {corpus.name!r} has only {sum(available)} "
                f"{unit.replace(' tokens', ' content tokens')}, fewer than --contexts "
                f"{n_contexts}: {_FIX_TOTAL}"
            )
    if balance:
        quotas = allocate_quotas([n_contexts] * len(topics), n_contexts, priority)
        short = [(t, a, q) for t, a, q in zip(topics, available, quotas, strict=True) if a < q]
        if short:
            detail = ", ".join(f"topic {t!r} has {a} {unit}, needs {q}" for t, a, q in short)
            raise CorpusError(
                f"corpus {corpus.name!r} is too small for a balanced sample: {detail}: {_FIX_TOPIC}"
            )
    else:
        quotas = allocate_quotas(available, n_contexts, priority)
    return _assemble(streams, quotas, prefix, suffix, priority)


def interleave_order(quotas: Sequence[int], priority: Sequence[int]) -> list[tuple[int, int]]:
    """Context order: ``(topic index, window index)``, topics taking turns in ``priority``.

    Round robin keeps every chunk of the store mixed across topics, and it makes plans
    prefix-stable: the first C contexts of a plan for N >= C contexts are the plan for C
    (windows come from each topic's stream in order and quotas fill evenly in the same
    priority order), which is what lets ``posctx extract`` extend a store with more contexts.

    >>> interleave_order([2, 1, 2], [2, 0, 1])
    [(2, 0), (0, 0), (1, 0), (2, 1), (0, 1)]
    """
    taken = [0] * len(quotas)
    order: list[tuple[int, int]] = []
    while len(order) < sum(quotas):
        for t in priority:
            if taken[t] < quotas[t]:
                order.append((t, taken[t]))
                taken[t] += 1
    return order


def _assemble(
    streams: dict[str, _TopicStream],
    quotas: Sequence[int],
    prefix: IntArray,
    suffix: IntArray,
    priority: Sequence[int],
) -> ContextPlan:
    names = list(streams)
    order = interleave_order(quotas, priority)
    n = len(order)
    windows = [streams[names[t]].windows[w] for t, w in order]
    token_ids = np.concatenate(
        [
            np.broadcast_to(prefix.astype(np.int32), (n, len(prefix))),
            np.stack(windows),
            np.broadcast_to(suffix.astype(np.int32), (n, len(suffix))),
        ],
        axis=1,
    )
    return ContextPlan(
        token_ids=np.ascontiguousarray(token_ids, dtype=np.int32),
        topic=np.array([names[t] for t, _ in order], dtype=str),
        source=np.array([streams[names[t]].sources[w] for t, w in order], dtype=str),
        offset=np.array([streams[names[t]].offsets[w] for t, w in order], dtype=np.int64),
        n_special=(len(prefix), len(suffix)),
    )


__all__ = ["ContextPlan", "allocate_quotas", "interleave_order", "sample_contexts"]
