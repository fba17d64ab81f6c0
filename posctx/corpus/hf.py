"""HuggingFace datasets as a corpus (``hf:NAME[/CONFIG][:SPLIT]``), streamed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from posctx.corpus.documents import Document, is_missing
from posctx.errors import CorpusError


@dataclass(frozen=True)
class HFSpec:
    """A parsed ``hf:NAME[/CONFIG][:SPLIT]`` corpus spec."""

    name: str
    config: str | None
    split: str


def parse_hf_spec(spec: str) -> HFSpec:
    """Parse ``hf:NAME[/CONFIG][:SPLIT]``; NAME may carry one organisation (``org/name``).

    One path part is a dataset name, two are NAME/CONFIG, three are ORG/NAME/CONFIG; a
    trailing slash (``ORG/NAME/``) names an organisation's dataset without a config. The
    split defaults to ``"train"``.

    Examples
    --------
    >>> parse_hf_spec("hf:wikitext/wikitext-103-raw-v1:validation")
    HFSpec(name='wikitext', config='wikitext-103-raw-v1', split='validation')
    >>> parse_hf_spec("hf:allenai/c4/en")
    HFSpec(name='allenai/c4', config='en', split='train')
    >>> parse_hf_spec("hf:roneneldan/TinyStories/")
    HFSpec(name='roneneldan/TinyStories', config=None, split='train')
    """
    body = spec[3:] if spec.startswith("hf:") else spec
    path, colon, split = body.partition(":")
    split = split if colon else "train"
    parts = path.split("/")
    # Two parts mean NAME/CONFIG, so an org dataset without a config is written ORG/NAME/
    # (empty config) to tell it apart.
    if not split or not 1 <= len(parts) <= 3 or not all(parts[:2]):
        raise CorpusError(
            f"corpus {spec!r} is not a HuggingFace spec: use hf:NAME, hf:NAME/CONFIG, "
            "hf:ORG/NAME/CONFIG or hf:ORG/NAME/ (no config), each optionally followed by :SPLIT"
        )
    if len(parts) == 1:
        return HFSpec(parts[0], None, split)
    if len(parts) == 2:
        return HFSpec(parts[0], parts[1], split)
    return HFSpec(f"{parts[0]}/{parts[1]}", parts[2] or None, split)


class HFCorpus:
    """A HuggingFace dataset split, streamed in dataset order without downloading it whole.

    Parameters
    ----------
    spec
        The parsed dataset spec.
    text_column, topic_column
        As for :class:`TableCorpus`; a ``ClassLabel`` topic column is mapped to label names.
    """

    def __init__(self, spec: HFSpec, text_column: str, topic_column: str | None) -> None:
        try:
            import datasets
        except ImportError as exc:
            raise CorpusError(
                "hf: corpora need the datasets package: pip install datasets "
                "(or pip install 'posctx[hf]')"
            ) from exc
        self.spec = spec
        self.name = spec.name.split("/")[-1]
        self.text_column = text_column
        self._datasets_version = str(getattr(datasets, "__version__", "unknown"))
        try:
            self._dataset = datasets.load_dataset(
                spec.name, spec.config, split=spec.split, streaming=True
            )
        except Exception as exc:  # datasets raises many types (network, config, split): one message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CorpusError(f"cannot open HuggingFace dataset {spec.name!r}: {first}") from exc
        columns = getattr(self._dataset, "column_names", None)
        #: the dataset's column names, or ``None`` where the stream does not list them.
        self.columns: list[str] | None = None if columns is None else list(columns)
        if columns is not None and text_column not in columns:
            raise CorpusError(
                f"dataset {spec.name!r} has no text column {text_column!r}: its columns are "
                f"{', '.join(map(repr, columns))}; choose one with --text-column"
            )
        # Without a column listing, assume the topic column exists and check row by row.
        has_topic = topic_column is not None and (columns is None or topic_column in columns)
        self.topic_column = topic_column if has_topic else None
        self.topics: tuple[str, ...] | None = None if has_topic else (self.name,)
        features = getattr(self._dataset, "features", None) or {}
        self._label_names: list[str] | None = getattr(
            features.get(self.topic_column) if self.topic_column else None, "names", None
        )

    def _label(self, value: object, row: int) -> str:
        if is_missing(value):
            raise CorpusError(
                f"row {row} of {self.spec.name!r} has no topic in column {self.topic_column!r}"
            )
        if self._label_names is not None and isinstance(value, int):
            return self._label_names[value]
        return str(value)

    def documents(self, seed: int) -> Iterator[Document]:
        """Stream the rows in dataset order (``seed`` is unused: streams cannot be shuffled)."""
        del seed
        for row, record in enumerate(self._dataset):
            text = record.get(self.text_column)
            if is_missing(text):
                continue
            topic = (
                self.name
                if self.topic_column is None
                else self._label(record.get(self.topic_column), row)
            )
            yield Document(text=str(text), topic=topic, source=f"row:{row}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "hf",
            "dataset": self.spec.name,
            "config": self.spec.config,
            "split": self.spec.split,
            "text_column": self.text_column,
            "topic_column": self.topic_column,
            "datasets_version": self._datasets_version,
        }


__all__ = [
    "HFSpec",
    "parse_hf_spec",
    "HFCorpus",
]
