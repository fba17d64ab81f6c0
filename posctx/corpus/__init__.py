"""Corpus layer: document sources and fixed-length token contexts cut from them.

``open_corpus`` turns a :class:`~posctx.config.CorpusConfig` into a :class:`Corpus` (a lazy,
seeded stream of :class:`Document` records); ``sample_contexts`` cuts a :class:`ContextPlan`
of token contexts from it, the input of the model forward pass.
"""

from __future__ import annotations

from posctx.corpus.contexts import ContextPlan, sample_contexts
from posctx.corpus.sources import Corpus, Document, open_corpus

__all__ = ["ContextPlan", "Corpus", "Document", "open_corpus", "sample_contexts"]
