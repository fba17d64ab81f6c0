"""Planning speed: contexts cut from a corpus, tokenised one document at a time (as before)
against documents read ahead and tokenised in batches, in the same run.

    python bench/plan_tokens.py --contexts 20000 --length 128 --repeat 2   # --no-balance

MiniLM's fast tokenizer on the built-in corpus. Reports tokens/s of planning (tokens of the
planned contexts over seconds) for each route, the routes alternating, and checks that both
plans are identical.
"""

from __future__ import annotations

import argparse
import statistics as stats
import time

import numpy as np

from posctx.config import CorpusConfig, ModelConfig
from posctx.corpus import open_corpus, sample_contexts
from posctx.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=20_000)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--corpus", default="stdlib")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--balance",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Balance topics (the built-in corpus is too small for 20,000 balanced contexts).",
    )
    args = parser.parse_args()
    loaded = load_model(ModelConfig(name="minilm"))
    corpus = open_corpus(CorpusConfig(spec=args.corpus))
    special = loaded.special
    times: dict[str, list[float]] = {"one document at a time": [], "batches": []}
    plans = {}
    for _ in range(args.repeat):
        for route in times:
            start = time.perf_counter()
            plans[route] = sample_contexts(
                corpus,
                loaded.encode,
                n_contexts=args.contexts,
                length=args.length,
                prefix_ids=special.prefix_ids,
                suffix_ids=special.suffix_ids,
                separator_ids=special.separator_ids,
                balance=args.balance,
                encode_batch=None if route.startswith("one") else loaded.encode_batch,
            )
            times[route].append(time.perf_counter() - start)
    a, b = plans.values()
    assert np.array_equal(a.token_ids, b.token_ids) and list(a.topic) == list(b.topic)
    tokens = args.contexts * args.length
    base = stats.median(times["one document at a time"])
    print(f"planning {args.contexts} contexts of {args.length} tokens ({tokens:,} tokens)")
    print("| route | seconds (median) | tokens/s | ratio |")
    print("|---|---|---|---|")
    for route, runs in times.items():
        median = stats.median(runs)
        print(f"| {route} | {median:.2f} | {tokens / median:,.0f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
