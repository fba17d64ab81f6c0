"""The paper's training experiments: train small GPT-2-architecture models on character-level
text at three levels of input randomization and on addition with and without carries, then
follow the geometry of pos and ctx across their checkpoints.

    python -m pipelines.training suite --out runs/training            # all five settings
    python -m pipelines.training run --config pipelines/configs/training/text.toml --level 1
    python -m pipelines.training run --config pipelines/configs/training/paper-addition.toml --device cuda
    python -m pipelines.training compare --out runs/training          # tables of finished runs

Each setting trains into ``OUT/NAME/checkpoints/`` (Hugging Face folders that
``posctx extract --model`` loads), measures every checkpoint (``OUT/NAME/geometry.csv``,
figures against step) and the last layer after vs before the final norm
(``OUT/NAME/final_norm.csv``). ``suite`` and ``compare`` put the final checkpoints side by
side in ``OUT/comparison.csv`` and ``OUT/figures/``. Every stage resumes: training from its
newest checkpoint, extraction block by block.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pandas as pd

from pipelines.common import CONTEXT_SETTINGS, markdown_table
from pipelines.train_config import TrainConfig
from pipelines.train_geometry import (
    checkpoint_geometry,
    compare_settings,
    final_norm_effect,
    headline,
    read_geometry,
)
from pipelines.train_loop import train
from posctx.cli import run_cli
from posctx.errors import PosctxError

#: The folder of the settings' TOML files.
CONFIGS = Path(__file__).resolve().parent / "configs" / "training"
#: The suite: (config file, overrides) of each default setting, in the order they run.
SUITE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("text.toml", {"level": 0}),
    ("text.toml", {"level": 1}),
    ("text.toml", {"level": 2}),
    ("addition.toml", {"carry": True}),
    ("addition.toml", {"carry": False}),
)


@dataclass(frozen=True)
class SettingResult:
    """What one setting produced."""

    config: TrainConfig
    folder: Path
    geometry: pd.DataFrame
    final_norm: pd.DataFrame
    seconds: float


def run_setting(
    config: TrainConfig, *, progress: bool = True, echo: Callable[[str], None] = click.echo
) -> SettingResult:
    """Train one setting (resuming), measure its checkpoints and the final-norm choice.

    Writes into ``config.out / config.name``, including ``timing.json``
    (:func:`write_timing`).
    """
    folder = Path(config.out) / config.name
    start = time.perf_counter()
    checkpoints = train(config, folder, progress=progress, echo=echo)
    trained = time.perf_counter()
    geometry = checkpoint_geometry(config, folder, checkpoints, progress=progress, echo=echo)
    effect = final_norm_effect(config, folder, checkpoints[-1], progress=progress)
    seconds = time.perf_counter() - start
    write_timing(folder, trained - start, seconds - (trained - start))
    echo(f"{config.name}: {seconds:.0f} s; results in {folder}")
    return SettingResult(config, folder, geometry, effect, seconds)


def write_timing(folder: Path, train_seconds: float, measure_seconds: float) -> dict[str, Any]:
    """Add one call's wall seconds to ``folder/timing.json``: each call is listed, and the
    totals sum them (a resumed setting's time is the sum of its calls)."""
    path = folder / "timing.json"
    calls = json.loads(path.read_text(encoding="utf-8"))["calls"] if path.exists() else []
    calls.append(
        {"train_seconds": round(train_seconds, 1), "measure_seconds": round(measure_seconds, 1)}
    )
    timing: dict[str, Any] = {
        "train_seconds": round(sum(c["train_seconds"] for c in calls), 1),
        "measure_seconds": round(sum(c["measure_seconds"] for c in calls), 1),
    }
    timing["total_seconds"] = round(timing["train_seconds"] + timing["measure_seconds"], 1)
    timing["calls"] = calls
    path.write_text(json.dumps(timing, indent=1) + "\n", encoding="utf-8")
    return timing


def suite_configs(out: str, configs: Path = CONFIGS, **overrides: Any) -> list[TrainConfig]:
    """The default settings (:data:`SUITE`) from ``configs``, writing under ``out``."""
    return [
        TrainConfig.from_toml(configs / name, **{**setting, **overrides, "out": out})
        for name, setting in SUITE
    ]


def run_suite(
    configs: Sequence[TrainConfig],
    out: Path,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = click.echo,
) -> pd.DataFrame:
    """Every setting, then the comparison of their final checkpoints (``OUT/comparison.*``,
    ``OUT/final_norm.*``, ``OUT/timing.json``)."""
    results = [run_setting(c, progress=progress, echo=echo) for c in configs]
    table = compare_settings([r.geometry for r in results], out)
    effect = pd.concat([r.final_norm for r in results], ignore_index=True)
    effect.to_csv(out / "final_norm.csv", index=False)
    timing = {  # every call of each setting, as its timing.json sums them
        r.config.name: json.loads((r.folder / "timing.json").read_text(encoding="utf-8"))
        for r in results
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n", encoding="utf-8")
    return table


def compare_folders(out: Path) -> pd.DataFrame:
    """The comparison of every finished setting under ``out`` (those with ``geometry.csv``)."""
    folders = sorted(p.parent for p in out.glob("*/geometry.csv"))
    if not folders:
        raise PosctxError(
            f"no finished setting under {out} (no */geometry.csv): run "
            f"`python -m pipelines.training suite --out {out}` first"
        )
    return compare_settings([read_geometry(f) for f in folders], out)


# --- command line -----------------------------------------------------------------------


def _config(config_file: str | None, **flags: Any) -> TrainConfig:
    if config_file:
        return TrainConfig.from_toml(config_file, **flags)
    return dataclasses.replace(TrainConfig(), **{k: v for k, v in flags.items() if v is not None})


@click.group(context_settings=CONTEXT_SETTINGS)
def command() -> None:
    """Train small GPT-2 models as in the paper and follow their geometry across checkpoints."""


@command.command(name="run")
@click.option(
    "--config", "config_file", metavar="FILE", help="TOML settings (pipelines/configs/training/)."
)
@click.option("--level", type=int, help="Text task: randomization level 0, 1 or 2.")
@click.option(
    "--carry/--no-carry",
    default=None,
    help="Addition task: ordinary sums or digit-wise sums mod 10.",
)
@click.option("--steps", type=int, help="Training steps (overrides the file).")
@click.option("--device", metavar="DEVICE", help="cpu, cuda or cuda:N.")
@click.option("--out", metavar="FOLDER", help="Parent folder; the setting writes OUT/NAME.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_command(quiet: bool, **flags: Any) -> None:
    """Train one setting and measure its checkpoints."""
    config = _config(**flags)
    result = run_setting(config, progress=not quiet)
    final = result.geometry[result.geometry["step"] == result.geometry["step"].max()]
    click.echo(markdown_table(headline(final)))


@command.command(name="suite")
@click.option("--out", default="runs/training", show_default=True, metavar="FOLDER")
@click.option(
    "--configs",
    default=str(CONFIGS),
    show_default=True,
    metavar="FOLDER",
    help="Folder with text.toml and addition.toml.",
)
@click.option("--device", metavar="DEVICE", help="cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def suite_command(out: str, configs: str, device: str | None, quiet: bool) -> None:
    """The five default settings (text at levels 0/1/2, addition with and without carries)."""
    chosen = suite_configs(out, Path(configs), device=device)
    table = run_suite(chosen, Path(out), progress=not quiet)
    click.echo(markdown_table(table))


@command.command(name="compare")
@click.option("--out", default="runs/training", show_default=True, metavar="FOLDER")
def compare_command(out: str) -> None:
    """Rebuild the comparison of the finished settings under OUT."""
    click.echo(markdown_table(compare_folders(Path(out))))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command on ``argv``; a wrong input ends as one line ``error: ...``, status 2."""
    run_cli(command, argv)


if __name__ == "__main__":
    main()
