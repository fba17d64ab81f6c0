"""The training experiments: their data, a resumable training loop, and a tiny run measured
end to end through posctx, checkpoint by checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import posctx
from pipelines import training
from pipelines.train_config import TrainConfig
from pipelines.train_data import (
    ADDITION_CHARS,
    addition_problem,
    addition_test_set,
    carries,
    char_tokenizer,
    text_batch,
    text_data,
)
from pipelines.train_geometry import HEADLINE, compare_settings
from pipelines.train_loop import (
    RECORD,
    TRAINER_STATE,
    Task,
    addition_accuracy,
    checkpoint_dir,
    learning_rate,
    read_record,
    train,
)
from posctx.cli import cli, run_cli
from posctx.errors import PosctxError
from posctx.geometry import metrics_table

CONFIGS = Path(training.__file__).resolve().parent / "configs" / "training"


# --- data -----------------------------------------------------------------------------------


def test_char_tokenizer_round_trips_text_with_newlines_and_marks_unseen_characters(
    tmp_path: Path,
) -> None:
    from transformers import AutoTokenizer

    char_tokenizer("ab\n =", 8).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)  # as posctx extract --model loads it
    ids = tok("a b\n\nz=", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 and ids[-2] == 0  # one token a character; z is [UNK]
    assert tok.decode(tok("ab\n= ba", add_special_tokens=False)["input_ids"]) == "ab\n= ba"
    assert tok("ab", add_special_tokens=True)["input_ids"] == [ids[0], ids[0] + 1]  # no framing


def test_addition_problems_carry_and_no_carry() -> None:
    assert addition_problem(99999, 1, 5, carry=True) == "99999+00001=00000"  # last carry dropped
    assert addition_problem(99999, 1, 5, carry=False) == "99999+00001=99990"
    assert addition_problem(12345, 54321, 5, carry=True) == "12345+54321=66666"
    assert carries(99999, 1, 5) == 5 and carries(12345, 54321, 5) == 0
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, 10**5, size=(200, 2)):
        text = addition_problem(int(a), int(b), 5, carry=True)
        assert int(text[-5:]) == (a + b) % 10**5
        plain = addition_problem(int(a), int(b), 5, carry=False)
        digits = [(int(x) + int(y)) % 10 for x, y in zip(f"{a:05d}", f"{b:05d}", strict=True)]
        assert plain[-5:] == "".join(map(str, digits))


def test_addition_test_set_is_balanced_over_carry_counts_and_shared_by_both_datasets() -> None:
    rows = addition_test_set(3, 10, 5, carry=True)
    plain = addition_test_set(3, 10, 5, carry=False)
    assert len(rows) == 40
    assert pd.Series([r["topic"] for r in rows]).value_counts().to_dict() == {
        "0 carries": 10,
        "1 carries": 10,
        "2 carries": 10,
        "3+ carries": 10,
    }
    for row, other in zip(rows, plain, strict=True):
        a, b = int(row["text"][:5]), int(row["text"][6:11])
        assert other["text"][:12] == row["text"][:12] and other["topic"] == row["topic"]
        k = carries(a, b, 5)
        assert row["topic"] == ("3+ carries" if k >= 3 else f"{k} carries")


def test_text_batches_randomize_half_or_all_of_each_window() -> None:
    text = "".join(chr(97 + i % 26) for i in range(5000))  # a b c ... : every window is a run
    data = text_data(text, char_tokenizer(text, 16), char_level=True)
    for level, first_random in ((0, 17), (1, 8), (2, 0)):
        x, y = text_batch(data, np.random.default_rng(1), 64, 16, level)
        window = np.concatenate([x, y[:, -1:]], axis=1)
        assert np.array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs one ahead
        steps = np.diff(window, axis=1) % 26
        assert (steps[:, : max(first_random - 1, 0)] == 1).all()  # plain text before the noise
        if first_random < 17:  # the noise is uniform over the 26 letters, [UNK] never
            noise = window[:, first_random:]
            assert noise.min() >= 1 and len(np.unique(noise)) == 26
            assert (steps[:, first_random:] == 1).mean() < 0.2


def test_learning_rate_warms_up_then_decays_to_min_lr() -> None:
    config = TrainConfig(steps=200, warmup=20, lr=1e-3, min_lr=1e-4)
    rates = [learning_rate(config, s) for s in range(201)]
    assert rates[19] == pytest.approx(1e-3) and max(rates) == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(rates[:20], rates[1:20], strict=False))
    assert all(a >= b for a, b in zip(rates[20:], rates[21:], strict=False))
    assert rates[-1] == pytest.approx(1e-4)


def _no_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    raise AssertionError("accuracy draws its own problems")


def test_addition_accuracy_generates_the_answer_after_the_equals_sign() -> None:
    """With a stand-in model that knows every answer, accuracy is 1; one wrong digit drops
    the exact-match rate to 0 and the digit rate to 4/5."""
    config = TrainConfig(task="addition", eval_problems=20, width=5, carry=False)
    tokenizer = char_tokenizer(ADDITION_CHARS, 17)
    vocab = tokenizer.get_vocab()

    class Stub:
        """Scores the next answer digit ``answer(a, b)`` gives highest."""

        def __init__(self, answer: Any) -> None:
            self.answer = answer

        def __call__(self, input_ids: torch.Tensor) -> Any:
            logits = torch.zeros(*input_ids.shape, len(vocab))
            for i, row in enumerate(input_ids.tolist()):
                text = "".join(tokenizer.convert_ids_to_tokens(row))
                digit = self.answer(int(text[:5]), int(text[6:11]))[len(text) - 12]
                logits[i, -1, vocab[digit]] = 1.0
            return SimpleNamespace(logits=logits)

        def eval(self) -> None: ...

        def train(self) -> None: ...

    task = Task(tokenizer, len(vocab), _no_batch, _no_batch, {})
    right = lambda a, b: addition_problem(a, b, 5, carry=False)[12:]  # noqa: E731
    wrong = lambda a, b: right(a, b)[:4] + str((int(right(a, b)[4]) + 1) % 10)  # noqa: E731

    assert addition_accuracy(Stub(right), task, config) == {"accuracy": 1.0, "digit_accuracy": 1.0}
    assert addition_accuracy(Stub(wrong), task, config) == {"accuracy": 0.0, "digit_accuracy": 0.8}


# --- configs --------------------------------------------------------------------------------


def test_config_files_load_and_name_their_settings() -> None:
    suite = training.suite_configs("runs/x")
    assert [c.name for c in suite] == [
        "text-level0",
        "text-level1",
        "text-level2",
        "addition-carry",
        "addition-nocarry",
    ]
    assert suite[3].sequence_length == 17 and suite[0].sequence_length == 64
    for name in ("paper-text", "paper-random", "paper-addition"):
        paper = TrainConfig.from_toml(CONFIGS / f"{name}.toml")
        assert paper.n_embd in (384, 512)
    assert TrainConfig.from_toml(CONFIGS / "paper-addition.toml").sequence_length == 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("levle = 1\n", r"unknown keys 'levle' \(did you mean 'level'\?\)"),
        ("level = 3\n", "level must be 0, 1 or 2, got 3"),
        ('task = "addition"\nlevel = 1\n', "level applies to the text task only"),
        ("n_embd = 100\nn_head = 3\n", "n_embd 100 is not a multiple of n_head 3"),
        ("checkpoints = [5, 99999]\n", r"checkpoints \[99999\] are not steps in 0..1600"),
        ("steps = 0\n", "steps must be an integer >= 1, got 0"),
    ],
)
def test_bad_config_files_are_refused_with_the_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PosctxError, match=message):
        TrainConfig.from_toml(path)


# --- the training loop ----------------------------------------------------------------------

MICRO = TrainConfig(
    text_chars=20_000,
    n_layer=1,
    n_head=2,
    n_embd=16,
    block_size=16,
    batch_size=4,
    steps=12,
    warmup=2,
    checkpoints=(0, 6),
    eval_batches=1,
)


def test_a_resumed_run_gives_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = train(MICRO, tmp_path / "whole", progress=False)
    assert [p.name for p in whole] == ["step-0000000", "step-0000006", "step-0000012"]
    train(MICRO, tmp_path / "stopped", until=6, progress=False)
    # A checkpoint cut short while being written is a hidden folder: ignored, then replaced.
    partial = tmp_path / "stopped" / "checkpoints" / ".step-0000012.partial"
    partial.mkdir()
    (partial / "config.json").write_text("{")
    resumed = train(MICRO, tmp_path / "stopped", progress=False)
    for a, b in zip(whole, resumed, strict=True):
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
        assert read_record(a)["held_out_loss"] == read_record(b)["held_out_loss"]
    assert not partial.exists()
    # Only the newest checkpoint keeps the optimizer state, and its record says how it was made.
    assert [(p / TRAINER_STATE).exists() for p in resumed] == [False, False, True]
    record = json.loads((resumed[-1] / RECORD).read_text())
    assert record["training"]["n_embd"] == 16 and record["data"]["text_chars"] == 20_000
    assert record["machine"]["torch_threads"] == torch.get_num_threads()
    other = dataclasses.replace(MICRO, lr=2e-3)
    with pytest.raises(PosctxError, match=r"trained with other settings \(lr: stored 0.001"):
        train(other, tmp_path / "stopped", progress=False)


def test_a_local_tokenizer_trains_and_is_saved_with_each_checkpoint(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """``tokenizer = DIR``: the text is encoded with that tokenizer (here word-level), random
    tokens range over its whole vocabulary, and each checkpoint carries it."""
    from transformers import AutoTokenizer

    config = dataclasses.replace(
        MICRO, tokenizer=str(tiny_models["gpt2"]), level=1, steps=2, checkpoints=(0,)
    )
    folders = train(config, tmp_path / "run", progress=False)
    record = read_record(folders[-1])
    assert record["data"]["vocab_size"] == len(AutoTokenizer.from_pretrained(tiny_models["gpt2"]))
    saved = AutoTokenizer.from_pretrained(folders[-1])
    assert (
        saved("alpha beta")["input_ids"]
        == AutoTokenizer.from_pretrained(tiny_models["gpt2"])("alpha beta")["input_ids"]
    )


# --- a tiny setting, end to end -------------------------------------------------------------


def test_tiny_setting_learns_and_its_table_is_posctx_on_its_checkpoints(tmp_path: Path) -> None:
    """The tiny config (tests' budget: a minute) trains, every checkpoint goes through
    ``posctx extract --model DIR``, and the pipeline's table is ``measure_geometry`` of the
    stored decompositions."""
    config = TrainConfig.from_toml(CONFIGS / "tiny.toml", out=str(tmp_path))
    result = training.run_setting(config, progress=False, echo=lambda _: None)
    geometry = result.geometry
    assert sorted(geometry["step"].unique()) == [0, 30, 60]
    losses = geometry.groupby("step")["held_out_loss"].first()
    assert losses[60] < 0.8 * losses[0]  # it learns: from ~log(vocab) well down
    # The decoder's last hidden state is after ln_f, and named so.
    names = geometry[geometry["step"] == 60]["layer_name"].tolist()
    assert names == ["embeddings", "block_1", "block_2+final_norm"]
    params = posctx.GeometryParams(max_contexts=config.max_contexts, seed=config.seed)
    for step, rows in geometry.groupby("step"):
        folder = result.folder / "geometry" / f"step-{step:07d}"
        hidden = posctx.open_hidden(str(folder / "hidden.zarr"))
        assert hidden.attrs["posctx"]["model"]["architecture"] == "GPT2Model"
        assert hidden.attrs["posctx"]["model"]["is_decoder"] is True
        direct = metrics_table(
            posctx.measure_geometry(
                posctx.open_decomposition(str(folder / "decomposition.zarr")), params=params
            )
        )
        for column in [*HEADLINE, "share_pos", "orth_max_cos"]:
            np.testing.assert_array_equal(rows[column].to_numpy(), direct[column].to_numpy())
    # The last checkpoint through the command line gives the pipeline's hidden states, bit for bit.
    last = checkpoint_dir(result.folder, 60)
    store = tmp_path / "cli.zarr"
    run_cli(
        cli,
        [
            "extract",
            "--model",
            str(last),
            "--corpus",
            "stdlib",
            "--contexts",
            str(config.contexts),
            "--length",
            str(config.sequence_length),
            "--batch-size",
            str(config.extract_batch_size),
            "--special-tokens",
            "none",
            "--out",
            str(store),
            "--quiet",
        ],
    )
    ours = posctx.open_hidden(str(result.folder / "geometry" / "step-0000060" / "hidden.zarr"))
    theirs = posctx.open_hidden(str(store))
    np.testing.assert_array_equal(ours.hidden.values, theirs.hidden.values)
    # Before vs after the final norm: the same last block, measured on either side of ln_f.
    effect = result.final_norm
    assert effect["layer_name"].tolist() == ["block_2+final_norm", "block_2"]
    assert effect["final_norm"].tolist() == ["after", "before"]
    assert effect["relative_norm"].iloc[0] != effect["relative_norm"].iloc[1]
    after = geometry[(geometry["step"] == 60) & (geometry["layer"] == 2)]
    assert effect["pos_stable_rank"].iloc[0] == after["pos_stable_rank"].iloc[0]
    # The files: tables, one figure per headline measurement, a timing.
    assert (result.folder / "geometry.md").read_text().startswith("| setting | step | layer |")
    figures = sorted(p.name for p in (result.folder / "figures").iterdir())
    assert figures == sorted([*(f"step_{m}.png" for m in HEADLINE), "step_learning.png"])
    assert json.loads((result.folder / "timing.json").read_text())["total_seconds"] > 0
    # The comparison takes each setting's last checkpoint.
    table = compare_settings([geometry], tmp_path / "cmp")
    assert table["step"].unique().tolist() == [60] and len(table) == 3
    assert (tmp_path / "cmp" / "figures" / "randomization_pos_stable_rank.png").exists()


@pytest.mark.parametrize(
    "module", ["pipelines.train_config", "pipelines.train_data", "pipelines.train_loop"]
)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 1


def test_addition_is_measured_on_held_out_problems_one_per_context(tmp_path: Path) -> None:
    from pipelines.train_geometry import measured_corpus

    config = TrainConfig(task="addition", carry=False, contexts=8)
    corpus = measured_corpus(config, tmp_path)
    assert corpus.windows == "documents"
    rows = [json.loads(line) for line in Path(corpus.spec).read_text().splitlines()]
    assert len(rows) == 8 and {len(r["text"]) for r in rows} == {config.sequence_length}
    assert rows == addition_test_set(config.seed + 1, 2, 5, carry=False)
    Path(corpus.spec).write_text("kept\n")  # written once: a second call reuses the file
    assert Path(measured_corpus(config, tmp_path).spec).read_text() == "kept\n"
