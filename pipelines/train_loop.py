"""Training a GPT-2-architecture model from scratch, with Hugging Face checkpoints that resume.

The loop is nanoGPT's: AdamW (weight decay on matrices only), linear warm-up then cosine
decay of the learning rate, gradient clipping, dropout. Each checkpoint is a folder that
``posctx extract --model DIR`` loads as it is::

    OUT/checkpoints/step-0000400/
        config.json, model.safetensors     GPT2LMHeadModel.save_pretrained
        tokenizer.json, tokenizer_config.json
        posctx_training.json               the settings, the data, losses, accuracy, timing
        trainer.pt                         optimizer and RNG state (newest checkpoint only)

A checkpoint is written to a hidden sibling folder and renamed into place, so one that exists
is whole. A run that stops resumes from its newest checkpoint and gives the same weights as
one that never stopped: batches depend only on ``(seed, step)``, and the optimizer and torch
RNG states are restored.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipelines.train_config import TrainConfig
from pipelines.train_data import (
    ADDITION_CHARS,
    TextData,
    addition_batch,
    addition_length,
    batch_rng,
    char_tokenizer,
    encode_chars,
    random_operands,
    read_text,
    text_batch,
    text_data,
)
from posctx.errors import PosctxError

#: The record written last into every checkpoint folder.
RECORD = "posctx_training.json"
#: Optimizer and RNG state, kept in the newest checkpoint only.
TRAINER_STATE = "trainer.pt"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


@dataclass
class Task:
    """What training needs of the data: a tokenizer, batches, and held-out evaluation."""

    tokenizer: Any
    vocab_size: int
    batch: Callable[[int], tuple[np.ndarray, np.ndarray]]
    held_out: Callable[[int], tuple[np.ndarray, np.ndarray]]
    describe: dict[str, Any]
    text: TextData | None = None


def make_task(config: TrainConfig) -> Task:
    """The tokenizer and the seeded batch makers of ``config``'s data."""
    if config.task == "addition":
        tokenizer = char_tokenizer(ADDITION_CHARS, addition_length(config.width))

        def problems(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            return addition_batch(
                rng, config.batch_size, config.width, config.carry, tokenizer, config.answer_only
            )

        def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
            return problems(batch_rng(config.seed, step, "train"))

        def held_out(i: int) -> tuple[np.ndarray, np.ndarray]:
            return problems(batch_rng(config.seed, i, "held-out"))

        describe = {"problems": "uniform operands", "width": config.width, "carry": config.carry}
        return Task(tokenizer, len(tokenizer), batch, held_out, describe)
    text = read_text(config.corpus, config.text_chars, config.seed)
    char_level = config.tokenizer == "char"
    if char_level:
        tokenizer = char_tokenizer(text, config.block_size)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    data = text_data(text, tokenizer, char_level=char_level)

    def text_train(step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = batch_rng(config.seed, step, "train")
        return text_batch(data, rng, config.batch_size, config.block_size, config.level)

    def text_held_out(i: int) -> tuple[np.ndarray, np.ndarray]:
        # Plain held-out text at every level: what the model learned of language.
        rng = batch_rng(config.seed, i, "held-out")
        return text_batch(data, rng, config.batch_size, config.block_size, 0, held_out=True)

    describe = {"corpus": config.corpus, "tokenizer": config.tokenizer, **data.describe()}
    return Task(tokenizer, data.vocab_size, text_train, text_held_out, describe, data)


def build_model(config: TrainConfig, vocab_size: int) -> Any:
    """A freshly initialised ``GPT2LMHeadModel`` (seeded by ``config.seed``)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    gpt = GPT2Config(
        vocab_size=vocab_size,
        n_positions=config.sequence_length,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=None,
        eos_token_id=None,
    )
    return GPT2LMHeadModel(gpt)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at the last step.

    >>> c = TrainConfig(steps=1000, warmup=100, lr=1e-3, min_lr=1e-4)
    >>> learning_rate(c, 0), learning_rate(c, 100), round(learning_rate(c, 1000), 6)
    (1e-05, 0.001, 0.0001)
    """
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(config.steps - config.warmup, 1)
    progress = min(max(step - config.warmup, 0) / span, 1.0)
    return config.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def make_optimizer(config: TrainConfig, model: Any) -> Any:
    """AdamW with weight decay on matrices only (nanoGPT's grouping)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def held_out_loss(model: Any, task: Task, config: TrainConfig) -> float:
    """Mean next-token loss on ``eval_batches`` fixed held-out batches."""
    import torch

    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(config.eval_batches):
            x, y = task.held_out(i)
            out = model(input_ids=torch.from_numpy(x).to(config.device))
            losses.append(_loss(out.logits, torch.from_numpy(y).to(config.device)).item())
    model.train()
    return float(np.mean(losses))


def addition_accuracy(model: Any, task: Task, config: TrainConfig) -> dict[str, float]:
    """Greedy generation of the answer after ``=`` on ``eval_problems`` held-out problems.

    Returns the share answered exactly and the share of answer digits right.
    """
    import torch

    from pipelines.train_data import addition_problem

    rng = batch_rng(config.seed, 0, "accuracy")
    operands = random_operands(rng, config.eval_problems, config.width)
    texts = [addition_problem(int(a), int(b), config.width, config.carry) for a, b in operands]
    ids = torch.from_numpy(encode_chars(texts, task.tokenizer)).to(config.device)
    prompt = 2 * config.width + 2  # "a+b="
    generated = ids[:, :prompt]
    model.eval()
    with torch.no_grad():
        for _ in range(config.width):
            logits = model(input_ids=generated).logits[:, -1, :]
            generated = torch.cat([generated, logits.argmax(-1, keepdim=True)], dim=1)
    model.train()
    right = (generated[:, prompt:] == ids[:, prompt:]).cpu().numpy()
    return {"accuracy": float(right.all(axis=1).mean()), "digit_accuracy": float(right.mean())}


def _loss(logits: Any, targets: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _completed(out: Path) -> list[int]:
    """Steps of the whole checkpoints in ``out`` (those with their record), oldest first."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    steps = []
    for path in folder.glob("step-*"):
        if (path / RECORD).is_file() and path.name[5:].isdigit():
            steps.append(int(path.name[5:]))
    return sorted(steps)


def read_record(path: Path) -> dict[str, Any]:
    """A checkpoint's ``posctx_training.json``."""
    record: dict[str, Any] = json.loads((path / RECORD).read_text(encoding="utf-8"))
    return record


def _refuse_other_settings(out: Path, step: int, config: TrainConfig) -> None:
    stored = read_record(checkpoint_dir(out, step))["training"]
    asked = json.loads(json.dumps(config.training_record()))
    defaults = json.loads(json.dumps(TrainConfig().training_record()))
    # A setting the record lacks was added since: it differs only if asked other than default.
    diffs = sorted(
        k for k in asked if (stored[k] != asked[k] if k in stored else asked[k] != defaults.get(k))
    )
    if diffs:
        details = ", ".join(f"{k}: stored {stored.get(k)!r}, asked {asked.get(k)!r}" for k in diffs)
        raise PosctxError(
            f"{out} holds a run trained with other settings ({details}): run with its settings "
            "to resume it, or choose another --out"
        )


def machine_record() -> dict[str, Any]:
    """What a resumed run must share to reach the same weights: rounding differs with the
    thread count, the CPU or GPU, and the torch version (not a setting, so not refused)."""
    import platform

    import torch

    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def save_checkpoint(
    out: Path,
    step: int,
    model: Any,
    task: Task,
    config: TrainConfig,
    measures: dict[str, Any],
    trainer: dict[str, Any],
) -> Path:
    """Write one checkpoint folder whole (hidden sibling, then rename) and drop the previous
    checkpoint's trainer state."""
    import torch

    final = checkpoint_dir(out, step)
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    task.tokenizer.save_pretrained(partial)
    torch.save(trainer, partial / TRAINER_STATE)
    record = {
        "step": step,
        "training": config.training_record(),
        "data": task.describe,
        "machine": machine_record(),
        **measures,
    }
    (partial / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)  # a folder without its record is not a checkpoint
    partial.rename(final)
    for older in _completed(out):
        if older < step:
            (checkpoint_dir(out, older) / TRAINER_STATE).unlink(missing_ok=True)
    return final


def train(
    config: TrainConfig,
    out: Path,
    *,
    until: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """Train ``config`` into ``out`` up to step ``until`` (default: all steps), resuming from
    the newest checkpoint there; returns every checkpoint folder, oldest first.

    Raises
    ------
    PosctxError
        ``out`` holds a run with other training settings.
    """
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" at every checkpoint
    until = config.steps if until is None else until
    wanted = [s for s in config.checkpoint_steps if s <= until]
    done = _completed(out)
    if done:
        _refuse_other_settings(out, done[-1], config)
    if all(s in done for s in wanted):
        return [checkpoint_dir(out, s) for s in wanted]
    task = make_task(config)
    start = done[-1] if done else 0
    if done:
        from transformers import GPT2LMHeadModel

        folder = checkpoint_dir(out, start)
        model: Any = GPT2LMHeadModel.from_pretrained(folder)
        model = model.to(config.device)
        optimizer = make_optimizer(config, model)
        state = torch.load(folder / TRAINER_STATE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        elapsed = float(read_record(folder)["train_seconds"])
        echo(f"{config.name}: resuming from step {start}")
    else:
        model = build_model(config, task.vocab_size).to(config.device)
        optimizer = make_optimizer(config, model)
        elapsed = 0.0
    model.train()
    recent: list[float] = []
    bar = tqdm(
        total=until,
        initial=start,
        disable=not progress,
        file=sys.stderr,
        desc=config.name,
        unit="step",
    )
    step = start
    clock = time.perf_counter()
    while True:
        if step in wanted and step not in done:
            elapsed += time.perf_counter() - clock
            measures: dict[str, Any] = {
                "train_loss": float(np.mean(recent)) if recent else None,
                "held_out_loss": held_out_loss(model, task, config),
                "train_seconds": elapsed,
                "lr": learning_rate(config, step),
            }
            if config.task == "addition":
                measures.update(addition_accuracy(model, task, config))
            trainer = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
            save_checkpoint(out, step, model, task, config, measures, trainer)
            done.append(step)
            recent = []
            bar.set_postfix(loss=f"{measures['held_out_loss']:.3f}")
            clock = time.perf_counter()
        if step >= until:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        x, y = task.batch(step)
        logits = model(input_ids=torch.from_numpy(x).to(config.device)).logits
        loss = _loss(logits, torch.from_numpy(y).to(config.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        recent.append(float(loss.item()))
        step += 1
        bar.update(1)
    bar.close()
    return [checkpoint_dir(out, s) for s in wanted]


__all__ = [
    "RECORD",
    "TRAINER_STATE",
    "Task",
    "addition_accuracy",
    "build_model",
    "checkpoint_dir",
    "held_out_loss",
    "learning_rate",
    "make_optimizer",
    "machine_record",
    "make_task",
    "read_record",
    "save_checkpoint",
    "train",
]
