"""What every pipeline shares: settings and their command-line options, one model x corpus
run, tables, figures.

Only posctx's public API is used here (``posctx``, ``posctx.geometry``, ``posctx.decomposition``,
``posctx.report``), as a user's own script would. The options are declared once, as click
decorators (:func:`pipeline_options`); each pipeline is a click command that
:func:`posctx.cli.run_cli` runs with the ``posctx`` command's conventions (a user error is one
line ``error: ...`` on stderr and exit status 2).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import click
import pandas as pd
import tomllib

import posctx
from posctx.config import MODEL_DTYPES, STORAGE_DTYPES
from posctx.decomposition.stores import decompose_store
from posctx.errors import PosctxError
from posctx.geometry import metrics_table

#: The paper's Table 1 columns, in our names: rank and stable rank of pos, relative norm of
#: pos, and the mean |cos| of ctx vectors within and between topics.
TABLE1_COLUMNS: dict[str, str] = {
    "pos_screenot_rank": "rank (ScreeNOT)",
    "pos_stable_rank": "stable rank",
    "relative_norm": "relative norm",
    "ctx_within": "ctx within",
    "ctx_between": "ctx between",
}

#: ``-h`` as well as ``--help``, as for ``posctx``.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}

_INTS = ("contexts", "length", "batch_size", "max_contexts", "seed")
_STRS = ("storage_dtype", "device", "dtype", "out")
_LISTS = ("models", "corpora")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings shared by the pipelines; a TOML file holds the same keys (see ``configs/``).

    Validated on construction: a wrong type or value raises :class:`~posctx.errors.PosctxError`
    with the message posctx gives for the same setting (``--contexts must be >= 1, ...``).
    """

    models: tuple[str, ...] = ("minilm",)
    corpora: tuple[str, ...] = ("stdlib",)
    contexts: int = 512
    length: int = 128
    batch_size: int = 32
    storage_dtype: str = "float32"
    device: str = "cpu"
    dtype: str = "float32"
    max_contexts: int = 2048
    seed: int = 0
    balance: bool = True
    out: str = "runs/pipeline"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in _LISTS:
            value = getattr(self, key)
            if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
                raise _wrong_type(key, value, "a list of names")
            if not value:
                raise PosctxError(
                    f"no {key} given: pass --{key} {','.join(_DEFAULTS[key])} "
                    "(comma-separated) or list them in the --config file"
                )
        for key in _INTS:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise _wrong_type(key, value, "an integer")
        for key in _STRS:
            if not isinstance(getattr(self, key), str):
                raise _wrong_type(key, getattr(self, key), "a string")
        if not isinstance(self.balance, bool):
            raise _wrong_type("balance", self.balance, "true or false")
        if not self.out:
            raise PosctxError("--out is empty: pass the folder for the results, e.g. --out runs/x")
        if self.max_contexts < 1:
            raise PosctxError(
                f"--max-contexts must be >= 1, got {self.max_contexts}: pass the number of "
                "contexts sampled for pairwise measures, e.g. --max-contexts 2048"
            )
        # posctx's own records check the rest, with the messages `posctx extract` gives.
        for corpus in self.corpora:
            self.extract_config(self.models[0], corpus)

    @classmethod
    def from_toml(cls, path: str | Path) -> PipelineConfig:
        """The settings in a TOML file; unknown keys and bad values raise ``PosctxError``."""
        try:
            data = tomllib.loads(Path(path).read_bytes().decode("utf-8"))
        except OSError as exc:
            raise PosctxError(
                f"cannot read config file {path} ({exc.strerror or type(exc).__name__}): "
                "check the path, or start from a file in pipelines/configs/"
            ) from exc
        except UnicodeDecodeError as exc:
            raise PosctxError(
                f"config file {path} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at "
                f"offset {exc.start}): save it as UTF-8"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise PosctxError(
                f"config file {path} is not valid TOML ({str(exc).splitlines()[0]}): fix that "
                "line; each setting is "
                'a line KEY = VALUE, e.g. contexts = 512 or models = ["minilm"]'
            ) from exc
        unknown = sorted(set(data) - set(_DEFAULTS))
        if unknown:
            names = ", ".join(repr(k) + _did_you_mean(k) for k in unknown)
            raise PosctxError(
                f"config file {path}: unknown key{'s' if len(unknown) > 1 else ''} {names}: "
                f"fix or remove {'them' if len(unknown) > 1 else 'it'}; the keys are "
                f"{', '.join(_DEFAULTS)}"
            )
        for key in _LISTS:
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        try:
            return cls(**data)
        except PosctxError as exc:
            raise PosctxError(f"config file {path}: {exc}") from exc

    def extract_config(self, model: str, corpus: str) -> posctx.ExtractConfig:
        """What ``posctx.extract`` needs to run ``model`` on ``corpus`` with these settings."""
        return posctx.ExtractConfig(
            corpus=posctx.CorpusConfig(spec=corpus, seed=self.seed, balance=self.balance),
            model=posctx.ModelConfig(
                name=model, batch_size=self.batch_size, device=self.device, dtype=self.dtype
            ),
            store=posctx.StoreConfig(
                contexts=self.contexts, length=self.length, storage_dtype=self.storage_dtype
            ),
        )


#: The keys of a TOML file, with their defaults (``extra`` is for Python callers only).
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(PipelineConfig) if f.name != "extra"}


def _wrong_type(key: str, value: object, kind: str) -> PosctxError:
    example = json.dumps(list(_DEFAULTS[key]) if key in _LISTS else _DEFAULTS[key])
    shown = list(value) if isinstance(value, tuple) else value  # as the TOML file wrote it
    return PosctxError(
        f"{key} must be {kind}, got {shown!r}: e.g. {key} = {example} in the --config file"
    )


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), list(_DEFAULTS), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- command-line options, declared once -------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])


def _default(key: str) -> str:
    value = _DEFAULTS[key]
    return ",".join(value) if isinstance(value, tuple) else str(value).lower()


#: ``--config FILE``: the settings from a TOML file; any flag given overrides the file.
config_option = click.option(
    "--config",
    "config_file",
    metavar="FILE",
    default=None,
    help="TOML file with these settings (keys as the flags, _ for -; see pipelines/configs/). "
    "Flags given override it.",
)
#: ``--models a,b``: several models (table1, compare_models, cluster).
models_option = click.option(
    "--models",
    metavar="LIST",
    default=None,
    help=f"Comma-separated: minilm, HF ids, local model folders. [default: {_default('models')}]",
)
#: ``--corpora a,b``: the corpus specs.
corpora_option = click.option(
    "--corpora",
    metavar="LIST",
    default=None,
    help="Comma-separated corpus specs: stdlib, paths, hf:NAME[/CONFIG][:SPLIT]. "
    f"[default: {_default('corpora')}]",
)
#: ``--quiet``: no progress bars.
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")

#: One option per remaining setting; none has a click default, so that a flag not given
#: leaves the ``--config`` file's value (or ``PipelineConfig``'s default) in place.
_SETTINGS = [
    click.option("--contexts", type=int, help=f"Contexts C. [default: {_default('contexts')}]"),
    click.option(
        "--length",
        type=int,
        help=f"Tokens per context T, special tokens included. [default: {_default('length')}]",
    ),
    click.option(
        "--batch-size",
        type=int,
        help=f"Contexts per forward pass. [default: {_default('batch_size')}]",
    ),
    click.option(
        "--max-contexts",
        type=int,
        help=f"Contexts sampled for pairwise measures. [default: {_default('max_contexts')}]",
    ),
    click.option(
        "--seed",
        type=int,
        help=f"Seeds the corpus sample and the measurements. [default: {_default('seed')}]",
    ),
    click.option(
        "--balance/--no-balance",
        default=None,
        help="Same number of contexts per topic. [default: balance]",
    ),
    click.option(
        "--storage-dtype",
        type=click.Choice(STORAGE_DTYPES),
        help=f"Dtype of the stored hidden states. [default: {_default('storage_dtype')}]",
    ),
    click.option(
        "--device", metavar="DEVICE", help=f"cpu, cuda or cuda:N. [default: {_default('device')}]"
    ),
    click.option(
        "--dtype",
        type=click.Choice(MODEL_DTYPES),
        help=f"Compute dtype of the forward pass. [default: {_default('dtype')}]",
    ),
    click.option("--out", metavar="FOLDER", help=f"Output folder. [default: {_default('out')}]"),
]


def settings_options(command: _F) -> _F:
    """Every setting but the models and corpora: ``--contexts`` ... ``--out``."""
    for option in reversed(_SETTINGS):
        command = option(command)
    return command


def pipeline_options(*, several_models: bool = True) -> Callable[[_F], _F]:
    """``--config``, ``--models`` (unless ``several_models`` is false), ``--corpora``, every
    setting and ``--quiet``: the options every pipeline takes.

    The command receives them as keyword arguments ``config_file``, ``models``, ``corpora``,
    ``contexts``, ..., ``quiet``; :func:`config_from_options` turns all but ``quiet`` into a
    :class:`PipelineConfig`.
    """

    def decorate(command: _F) -> _F:
        command = quiet_option(command)
        command = settings_options(command)
        command = corpora_option(command)
        if several_models:
            command = models_option(command)
        return config_option(command)

    return decorate


def split_list(value: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``: a comma-separated flag value.

    >>> split_list("minilm, gpt2,")
    ('minilm', 'gpt2')
    """
    return tuple(v.strip() for v in value.split(",") if v.strip())


def config_from_options(config_file: str | None = None, **flags: Any) -> PipelineConfig:
    """The ``--config`` file's settings (or the defaults), overridden by every flag given.

    ``flags`` are the options' values, ``None`` where a flag was not given; ``models`` and
    ``corpora`` are comma-separated strings.
    """
    config = PipelineConfig.from_toml(config_file) if config_file else PipelineConfig()
    changes = {key: value for key, value in flags.items() if value is not None}
    for key in _LISTS:
        if key in changes:
            changes[key] = split_list(changes[key])
    return replace(config, **changes)


def check_inputs(
    config: PipelineConfig,
    *,
    models: Sequence[str] | None = None,
    corpora: Sequence[str] | None = None,
) -> None:
    """Refuse any model or corpus that cannot work before the first run starts.

    ``models`` and ``corpora`` default to the config's. No model file is read:
    :func:`posctx.model.check_loadable` and :func:`posctx.corpus.open_corpus` check what can be
    known without loading, with the messages ``posctx extract`` gives.
    """
    from posctx.corpus import open_corpus
    from posctx.model import check_loadable

    models = config.models if models is None else models
    corpora = config.corpora if corpora is None else corpora
    for model in models:
        check_loadable(config.extract_config(model, corpora[0]).model)
    for corpus in corpora:
        open_corpus(config.extract_config(models[0], corpus).corpus)


def slug(text: str) -> str:
    """A folder name for a model or corpus spec.

    >>> slug("hf:wikitext/wikitext-2-raw-v1:train")
    'hf-wikitext-wikitext-2-raw-v1-train'
    """
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "x"


def short(label: str) -> str:
    """A legend label: a local path by its last part, anything else as it is.

    >>> short("/data/models/tiny-bert"), short("hf:imdb"), short("gpt2")
    ('tiny-bert', 'hf:imdb', 'gpt2')
    """
    return Path(label).name if "/" in label and ":" not in label else label


def run_one(
    config: PipelineConfig,
    model: str,
    corpus: str,
    *,
    client: Any = None,
    report: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = click.echo,
    folder: Path | None = None,
) -> pd.DataFrame:
    """Extract (resumable), decompose and measure one model on one corpus.

    Writes ``hidden.zarr``, ``decomposition.zarr`` (and ``report/`` when asked) to ``folder``,
    by default ``OUT/MODEL/CORPUS`` (local paths by their last part); returns the per-layer measurements with ``model``,
    ``corpus``, ``layer`` and ``depth`` (layer / last layer, to put models of different depth
    side by side) columns.
    """
    folder = folder or Path(config.out) / slug(short(model)) / slug(short(corpus))
    hidden_path = str(folder / "hidden.zarr")  # extract creates the folders once it can run
    result = posctx.extract(
        config.extract_config(model, corpus), hidden_path, progress=progress, client=client
    )
    echo(
        f"{model} on {corpus}: {result.blocks_written} blocks extracted "
        f"({result.blocks_already_done} already done)"
    )
    # moments=True: the hidden states' spectral norm (for the relative norm) comes from the
    # same single pass, so measuring needs no second read of the store.
    dec = decompose_store(
        hidden_path, str(folder / "decomposition.zarr"), moments=True, mode="w"
    ).decomposition
    params = posctx.GeometryParams(max_contexts=config.max_contexts, seed=config.seed)
    if report:
        metrics = posctx.write_report(
            dec, folder / "report", params=params, progress=progress
        ).metrics
        echo(f"report: {folder / 'report' / 'index.html'}")
    else:
        metrics = posctx.measure_geometry(dec, params=params, progress=progress)
    table = metrics_table(metrics).reset_index()
    last = max(int(table["layer"].max()), 1)
    table.insert(0, "corpus", corpus)
    table.insert(0, "model", model)
    table.insert(3, "depth", table["layer"] / last)
    return table


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    header = [str(c) for c in frame.columns]
    rows = [
        [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 columns of per-layer measurements, renamed for reading."""
    keep = ["model", "corpus", "layer", *TABLE1_COLUMNS]
    return frame[keep].rename(columns=TABLE1_COLUMNS)


def plot_layerwise(
    frame: pd.DataFrame,
    metrics: Sequence[str],
    out: Path,
    *,
    by: Sequence[str] = ("model", "corpus"),
    x: str = "depth",
) -> list[Path]:
    """One figure per measurement: a line per ``by`` group against ``x``; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
        for key, group in frame.groupby(list(by), sort=False):
            label = " / ".join(short(str(k)) for k in (key if isinstance(key, tuple) else (key,)))
            ax.plot(group[x], group[metric], marker="o", label=label)
        ax.set_xlabel("layer / last layer" if x == "depth" else x)
        ax.set_ylabel(TABLE1_COLUMNS.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        path = out / f"{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


__all__ = [
    "CONTEXT_SETTINGS",
    "PipelineConfig",
    "TABLE1_COLUMNS",
    "check_inputs",
    "config_from_options",
    "config_option",
    "corpora_option",
    "markdown_table",
    "models_option",
    "pipeline_options",
    "plot_layerwise",
    "quiet_option",
    "run_one",
    "settings_options",
    "short",
    "slug",
    "split_list",
    "table1",
]
