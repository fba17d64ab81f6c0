"""The settings of one training run, validated on construction and read from TOML.

One :class:`TrainConfig` is one *setting* of the paper's experiments: a task (``text`` or
``addition``), its data options (randomization level; carry or not), the model, the
optimisation, the checkpoint steps and how each checkpoint's geometry is measured. The files in
``pipelines/configs/training/`` hold the defaults (2 CPU cores, 15 minutes or less each) and
the paper's sizes (for a GPU).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from posctx.errors import PosctxError

TASKS = ("text", "addition")


@dataclass(frozen=True)
class TrainConfig:
    """One training setting. Every field is a TOML key of the same name.

    >>> TrainConfig(task="addition", carry=False).name
    'addition-nocarry'
    >>> TrainConfig(level=2).name, TrainConfig(level=2).checkpoint_steps
    ('text-level2', (0, 50, 100, 200, 400, 800, 1600))
    """

    # --- data ---
    task: str = "text"
    #: Randomization level of the text task: 0 plain, 1 second half random, 2 all random.
    level: int = 0
    #: Addition: ordinary sums (true) or digit-wise sums modulo 10 (false).
    carry: bool = True
    #: Addition: digits per operand (the paper: 10).
    width: int = 5
    #: Addition: train on the answer's digits only, not on every next character.
    answer_only: bool = False
    corpus: str = "stdlib"
    #: ``"char"`` (a character tokenizer built from the text) or a local tokenizer folder.
    tokenizer: str = "char"
    #: Characters of the corpus read for the text task.
    text_chars: int = 2_000_000
    # --- model (GPT-2 architecture) ---
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    #: Context length of the text task; addition uses one problem (3 width + 2).
    block_size: int = 64
    dropout: float = 0.1
    # --- optimisation (nanoGPT's AdamW, warm-up then cosine decay) ---
    batch_size: int = 32
    steps: int = 1600
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    #: Steps saved as checkpoints; empty means 0, steps/32, steps/16, ... steps.
    checkpoints: tuple[int, ...] = ()
    seed: int = 0
    device: str = "cpu"
    #: Held-out batches for the validation loss, and problems for addition accuracy.
    eval_batches: int = 8
    eval_problems: int = 512
    # --- geometry of each checkpoint ---
    contexts: int = 256
    max_contexts: int = 256
    extract_batch_size: int = 64
    out: str = "runs/training"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise PosctxError(
                f'task must be one of {", ".join(TASKS)}, got {self.task!r}: e.g. task = "text"'
            )
        if self.level not in (0, 1, 2):
            raise PosctxError(
                f"level must be 0, 1 or 2, got {self.level!r}: 0 plain text, 1 second half random, 2 all random"
            )
        if self.answer_only and self.task != "addition":
            raise PosctxError(
                'answer_only applies to the addition task only: drop it, or use task = "addition"'
            )
        if self.task == "addition" and self.level:
            raise PosctxError(
                'level applies to the text task only: drop level, or use task = "text"'
            )
        for key in (
            "width",
            "n_layer",
            "n_head",
            "n_embd",
            "block_size",
            "batch_size",
            "steps",
            "eval_batches",
            "eval_problems",
            "contexts",
            "max_contexts",
            "extract_batch_size",
            "text_chars",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PosctxError(
                    f"{key} must be an integer >= 1, got {value!r}: e.g. {key} = {_DEFAULTS[key]}"
                )
        if self.n_embd % self.n_head:
            raise PosctxError(
                f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}: e.g. n_embd = {self.n_head * 32}"
            )
        if not 0 <= self.dropout < 1:
            raise PosctxError(
                f"dropout must be in [0, 1), got {self.dropout!r}: e.g. dropout = 0.1"
            )
        if not 0 < self.min_lr <= self.lr:
            raise PosctxError(
                f"need 0 < min_lr <= lr, got min_lr {self.min_lr!r} and lr {self.lr!r}: "
                "e.g. lr = 1e-3 and min_lr = 1e-4 (min_lr = lr for a constant rate)"
            )
        bad = [s for s in self.checkpoints if not isinstance(s, int) or not 0 <= s <= self.steps]
        if bad:
            raise PosctxError(
                f"checkpoints {bad} are not steps in 0..{self.steps}: list steps of this run, or leave checkpoints empty"
            )
        if not self.out:
            raise PosctxError(
                "out is empty: pass the folder for the results, e.g. --out runs/training"
            )

    @property
    def name(self) -> str:
        """The setting's folder name: ``text-level0``, ``addition-carry``, ..."""
        if self.task == "addition":
            return f"addition-{'carry' if self.carry else 'nocarry'}"
        return f"text-level{self.level}"

    @property
    def sequence_length(self) -> int:
        """Tokens of one training sequence and one measured context."""
        return 3 * self.width + 2 if self.task == "addition" else self.block_size

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        """The steps saved: the given ones, or 0 and halvings of the run down to steps/32."""
        if self.checkpoints:
            return tuple(sorted({*self.checkpoints, self.steps}))
        return tuple(sorted({0, self.steps, *(self.steps >> k for k in range(1, 6))}))

    def training_record(self) -> dict[str, Any]:
        """The fields that decide the trained weights (not where they go or how they are
        measured): a resumed run must match them."""
        skip = {
            "out",
            "extra",
            "contexts",
            "max_contexts",
            "extract_batch_size",
            "device",
            "eval_batches",
            "eval_problems",
        }
        record = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }
        record["checkpoints"] = list(self.checkpoint_steps)
        return record

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """The settings of a TOML file, with ``overrides`` (those not ``None``) on top."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PosctxError(
                f"cannot read config file {path} ({exc.strerror or type(exc).__name__}): check the path, or start from pipelines/configs/training/"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise PosctxError(
                f"config file {path} is not valid TOML ({str(exc).splitlines()[0]}): fix that line"
            ) from exc
        unknown = sorted(set(data) - set(_DEFAULTS))
        if unknown:
            hints = [
                f"{k!r}"
                + "".join(
                    f" (did you mean {c!r}?)"
                    for c in difflib.get_close_matches(k, list(_DEFAULTS), n=1)
                )
                for k in unknown
            ]
            raise PosctxError(
                f"config file {path}: unknown keys {', '.join(hints)}: fix or remove them"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(data.get("checkpoints"), list):
            data["checkpoints"] = tuple(data["checkpoints"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise PosctxError(f"config file {path}: {exc}") from exc
        except PosctxError as exc:
            raise PosctxError(f"config file {path}: {exc}") from exc


_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name != "extra"
}

__all__ = ["TASKS", "TrainConfig"]
