"""The bad-input matrix: every wrong input fails with one clear line, exit 2, nothing touched.

One table (``CASES``) of wrong inputs to the user-facing entry points. Each case runs through
``posctx.cli.main`` -- what the installed ``posctx`` command runs -- or a pipeline's ``main``
(``python -m pipelines.table1`` ...; both run their click command through
``posctx.cli.run_cli``) inside click's ``CliRunner`` (in process), or calls the Python API
directly, and asserts:

* a non-zero exit status (2 for user errors: ``PosctxError`` and click usage errors);
* the message names the problem (``problem``) and says what to do (``advice``);
* a ``PosctxError`` is one line starting with ``error: ``; nothing escapes as a traceback;
* the case's whole working folder -- the copied store included -- is byte for byte unchanged,
  so an existing store is never touched and a failed run leaves nothing behind;
* for ``before_model`` cases, the failure comes before any model file is read.

``docs/reliability.md`` (section "Bad-input matrix") has one row per case id.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
from click.testing import CliRunner, Result
from fsspec.implementations.memory import MemoryFileSystem

from posctx.errors import PosctxError

# --- helpers ------------------------------------------------------------------------------


class _EntryPoint:
    """A module's ``main()`` in the shape ``CliRunner.invoke`` expects of a click command.

    ``posctx.cli.main`` is the console script and a pipeline's ``main`` is what ``python -m
    pipelines.NAME`` runs: each reads ``sys.argv`` and runs its click command through
    ``posctx.cli.run_cli``, which turns a ``PosctxError`` into one line on stderr and exit
    status 2 -- what invoking the click command directly would not show.
    """

    def __init__(self, module: str) -> None:
        self.module = module
        self.name = module

    def main(self, args: list[str], prog_name: str, **_: Any) -> None:
        main = importlib.import_module(self.module).main
        saved = sys.argv
        sys.argv = [prog_name, *args]
        try:
            main()
        finally:
            sys.argv = saved


def run_entry(module: str, *args: str) -> Result:
    """Run ``module``'s ``main()`` on ``args`` in process (``posctx.cli``, ``pipelines.table1``...)."""
    return CliRunner().invoke(_EntryPoint(module), list(args))  # type: ignore[arg-type]  # duck-typed command


def run_posctx(*args: str) -> Result:
    return run_entry("posctx.cli", *args)


class ReadOnlyMemoryFS(MemoryFileSystem):
    """An fsspec filesystem where every write fails as on a read-only mount (EROFS).

    Registered for ``posctxro://``; it simulates a read-only bucket or disk. Reads work.
    """

    protocol = "posctxro"
    store: dict[str, Any] = {}  # its own, not MemoryFileSystem's shared store
    pseudo_dirs = [""]

    @staticmethod
    def _refuse(path: object = "") -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" not in mode or "+" in mode:
            self._refuse(path)
        return super()._open(path, mode, **kwargs)

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        self._refuse(path)

    def mkdir(self, path: str, *args: Any, **kwargs: Any) -> None:
        self._refuse(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self._refuse(path)

    def rm_file(self, path: str) -> None:
        self._refuse(path)

    def rm(self, path: Any, *args: Any, **kwargs: Any) -> None:
        self._refuse(path)

    def touch(self, path: str, *args: Any, **kwargs: Any) -> None:
        self._refuse(path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        self._refuse(path2)


fsspec.register_implementation("posctxro", ReadOnlyMemoryFS, clobber=True)


def _tree_digest(root: Path) -> str:
    """Hash of every entry's relative path, kind and (regular files) content under ``root``."""
    digest = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *files]):
            full = Path(dirpath) / name
            st = os.lstat(full)
            digest.update(f"{full.relative_to(root)}:{stat.S_IFMT(st.st_mode)}".encode())
            if stat.S_ISREG(st.st_mode):
                try:
                    with open(full, "rb") as handle:  # not Path.open, which a case patches
                        digest.update(handle.read())
                except OSError:  # a deliberately unreadable file (non-root runs)
                    digest.update(b"<unreadable>")
            elif stat.S_ISLNK(st.st_mode):
                digest.update(os.readlink(full).encode())
    return digest.hexdigest()


# --- the good store every store case copies -----------------------------------------------

EXTRACT = ["--contexts", "12", "--length", "16", "--chunk-contexts", "4", "--quiet"]


@dataclass(frozen=True)
class Stores:
    models: dict[str, Path]
    hidden: Path
    decomposition: Path


@pytest.fixture(scope="module")
def stores(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Stores:
    """A complete tiny-BERT store (12 contexts, length 16, 3 blocks) and its decomposition."""
    root = tmp_path_factory.mktemp("good")
    hidden, dec = root / "h.zarr", root / "d.zarr"
    run = run_posctx("extract", "--model", str(tiny_models["bert"]), *EXTRACT, "--out", str(hidden))
    assert run.exit_code == 0, run.output
    run = run_posctx("decompose", str(hidden), "--out", str(dec))
    assert run.exit_code == 0, run.output
    return Stores(tiny_models, hidden, dec)


class Env:
    """What a case's setup may use: its own folder, the tiny models, copies of the stores."""

    def __init__(self, root: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.stores = stores
        self.monkeypatch = monkeypatch

    def path(self, name: str) -> str:
        return str(self.root / name)

    def model(self, kind: str = "bert") -> str:
        return str(self.stores.models[kind])

    def hidden(self) -> str:
        """A private copy of the good hidden-state store."""
        target = self.root / "h.zarr"
        if not target.exists():
            shutil.copytree(self.stores.hidden, target)
        return str(target)

    def decomposition(self) -> str:
        """A private copy of the good decomposition store."""
        target = self.root / "d.zarr"
        if not target.exists():
            shutil.copytree(self.stores.decomposition, target)
        return str(target)

    def write(self, name: str, content: bytes | str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return str(path)

    def extract(self, *options: str, model: str = "bert", out: str | None = None) -> list[str]:
        """``posctx extract`` with the good store's settings, then ``options`` (last wins)."""
        target = out if out is not None else self.path("new.zarr")
        return ["extract", "--model", self.model(model), *EXTRACT, *options, "--out", target]


# --- setups that need more than one line --------------------------------------------------

_TEXT = "The quick brown fox jumps over the lazy dog near the river bank today. " * 40


def _broken_symlink(env: Env) -> list[str]:
    link = env.root / "corpus.txt"
    link.symlink_to(env.root / "gone.txt")
    return env.extract("--corpus", str(link))


def _fifo(env: Env) -> list[str]:
    fifo = env.root / "corpus.txt"
    os.mkfifo(fifo)
    return env.extract("--corpus", str(fifo))


def _unreadable(env: Env) -> list[str]:
    """chmod 000; as root (which reads anyway) opening it also raises EACCES, as it would."""
    path = Path(env.write("corpus.txt", _TEXT))
    path.chmod(0)
    if os.geteuid() == 0:
        real_open = Path.open

        def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self.absolute() == path.absolute():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_open(self, *args, **kwargs)

        env.monkeypatch.setattr(Path, "open", denied)
    return env.extract("--corpus", str(path))


def _schema(env: Env, version: int = 99) -> str:
    """A copy of the good store whose root attrs claim another schema version."""
    store = Path(env.hidden())
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["posctx_schema"] = version
    (store / "zarr.json").write_text(json.dumps(meta))
    return str(store)


def _incomplete(env: Env) -> str:
    """A copy of the good store whose last block's completion marker was never written."""
    store = Path(env.hidden())
    marker = store / "block_complete" / "c" / "2"
    assert marker.is_file()
    marker.unlink()
    return str(store)


def _damaged(env: Env, block: int = 1, unmarked: int | None = None) -> str:
    """A copy of the good store that lost ``block``'s chunk file of ``hidden`` (a partial copy).

    Every block is one chunk (all layers), so that is all of the block's hidden states; the
    markers still say it was written. With ``unmarked``, that block's marker is gone too (an
    interrupted extraction, as in ``_incomplete``).
    """
    store = Path(env.hidden())
    chunk = store / "hidden" / "c" / str(block) / "0" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    if unmarked is not None:
        (store / "block_complete" / "c" / str(unmarked)).unlink()
    return str(store)


def _foreign_zarr(env: Env) -> str:
    """A Zarr v3 group that posctx did not write."""
    import zarr

    path = env.path("other.zarr")
    zarr.open_group(path, mode="w").create_array("x", shape=(2,), dtype="i4")[:] = [1, 2]
    return path


def _truncated_model(env: Env) -> str:
    """A copy of the tiny BERT whose weights file lost its second half (a cut-off copy)."""
    folder = env.root / "bert-cut"
    shutil.copytree(env.model(), folder)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    return str(folder)


def _no_model(env: Env) -> str:
    folder = env.root / "not-a-model"
    folder.mkdir()
    (folder / "README.md").write_text("weights went elsewhere")
    return str(folder)


# --- the matrix ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One wrong input and what must come of it.

    ``setup`` returns command-line arguments (run through ``entry``'s ``main``) or, for
    Python API cases, a callable that must raise a ``PosctxError``.
    """

    id: str
    setup: Callable[[Env], list[str] | Callable[[], object]]
    problem: str
    advice: str
    entry: str = "posctx.cli"  # or a pipeline: "pipelines.table1", "pipelines.cluster"...
    usage: bool = False  # a click usage error (``Usage: ...`` then ``Error: ...``)
    before_model: bool = False  # must fail before any model file is read
    xfail: str = ""  # why this case does not meet the bar yet (strict: a pass is reported)


CASES: list[Case] = [
    # corpus --------------------------------------------------------------------------------
    Case(
        "corpus-missing-path",
        lambda e: e.extract("--corpus", e.path("nope.txt")),
        "no such path",
        "accepted are",
        before_model=True,
    ),
    Case(
        "corpus-empty-file",
        lambda e: e.extract("--corpus", e.write("empty.txt", "")),
        "is empty",
        "add text to it",
        before_model=True,
    ),
    Case(
        "corpus-whitespace-file",
        lambda e: e.extract("--corpus", e.write("blank.txt", " \n\t\n  \n")),
        "has 0 tokens, fewer than one context",
        "a bigger corpus",
    ),
    Case(
        "corpus-empty-folder",
        lambda e: e.extract("--corpus", str(Path(e.write("empty/.keep", "")).parent)),
        "holds no text files",
        "accepted are",
        before_model=True,
    ),
    Case(
        "corpus-folder-named-like-a-file",
        lambda e: e.extract("--corpus", str(Path(e.write("corpus.txt/.keep", "")).parent)),
        "holds no text files",
        "accepted are",
        before_model=True,
    ),
    Case(
        "corpus-broken-symlink",
        _broken_symlink,
        "is a broken symbolic link",
        "fix the link",
        before_model=True,
    ),
    Case(
        "corpus-fifo",
        _fifo,
        "not a regular file or folder",
        "copy the text into a file",
        before_model=True,
    ),
    Case(
        "corpus-unreadable-file",
        _unreadable,
        "cannot read corpus file",
        "check its permissions",
        before_model=True,
    ),
    Case(
        "corpus-latin1-text",
        lambda e: e.extract(
            "--corpus", e.write("notes.txt", ("caf\u00e9 " + _TEXT).encode("latin-1"))
        ),
        "notes.txt' is not valid UTF-8 (byte 0xe9 at offset 3)",
        "convert it to UTF-8",
    ),
    Case(
        "corpus-utf16-text",
        lambda e: e.extract("--corpus", e.write("notes.txt", _TEXT.encode("utf-16"))),
        "notes.txt' is not valid UTF-8 (byte 0xff at offset 0)",
        "convert it to UTF-8",
    ),
    Case(
        "corpus-latin1-jsonl",
        lambda e: e.extract(
            "--corpus", e.write("rows.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
        ),
        "rows.jsonl' is not valid UTF-8 (byte 0xe9 at offset 28)",
        "convert it to UTF-8",
    ),
    Case(
        "corpus-latin1-csv",
        lambda e: e.extract("--corpus", e.write("rows.csv", b"text\nok\ncaf\xe9\n")),
        "rows.csv' is not valid UTF-8 (byte 0xe9 at offset 11)",
        "convert it to UTF-8",
    ),
    Case(
        "corpus-jsonl-topic-column-missing",
        lambda e: e.extract(
            "--corpus",
            e.write("rows.jsonl", json.dumps({"text": _TEXT, "label": "a"}) + "\n"),
            "--topic-column",
            "topic",
        ),
        "has no topic column 'topic': its columns are 'text', 'label'",
        "choose one with --topic-column",
        before_model=True,
    ),
    Case(
        "corpus-csv-topic-column-missing",
        lambda e: e.extract(
            "--corpus",
            e.write("rows.csv", f"body,label\n{_TEXT},a\n"),
            "--text-column",
            "body",
            "--topic-column",
            "kind",
        ),
        "has no topic column 'kind': its columns are 'body', 'label'",
        "choose one with --topic-column",
        before_model=True,
    ),
    Case(
        "corpus-csv-text-column-missing",
        lambda e: e.extract("--corpus", e.write("rows.csv", f"body,label\n{_TEXT},a\n")),
        "has no text column 'text': its columns are 'body', 'label'",
        "choose one with --text-column",
        before_model=True,
    ),
    Case(
        "corpus-jsonl-invalid-line",
        lambda e: e.extract("--corpus", e.write("rows.jsonl", '{"text": "short"}\n{oops\n')),
        "rows.jsonl:2 is not valid JSON",
        "one JSON object per line",
    ),
    Case(
        "corpus-unknown-extension",
        lambda e: e.extract("--corpus", e.write("paper.pdf", b"%PDF-1.4")),
        "'.pdf' is not a known extension",
        "accepted are",
        before_model=True,
    ),
    Case(
        "corpus-malformed-hf-spec",
        lambda e: e.extract("--corpus", "hf:"),
        "is not a HuggingFace spec",
        "use hf:NAME",
        before_model=True,
    ),
    Case(
        "corpus-too-small-for-one-context",
        lambda e: e.extract("--corpus", e.write("small.txt", "only a few words here")),
        "fewer than one context",
        "a bigger corpus",
    ),
    Case(
        "corpus-too-small-for-contexts",
        lambda e: e.extract("--corpus", e.write("small.txt", " ".join(["word"] * 60))),
        "has 3 windows of 14 tokens, needs 12",
        "lower --contexts",
    ),
    # sizes and settings ----------------------------------------------------------------------
    Case(
        "length-zero",
        lambda e: e.extract("--length", "0"),
        "--length must be >= 2, got 0",
        "e.g. --length 128",
        before_model=True,
    ),
    Case(
        "length-negative",
        lambda e: e.extract("--length", "-5"),
        "--length must be >= 2, got -5",
        "e.g. --length 128",
        before_model=True,
    ),
    Case(
        "length-one",
        lambda e: e.extract("--length", "1"),
        "--length must be >= 2, got 1",
        "e.g. --length 128",
        before_model=True,
    ),
    Case(
        "length-only-special-tokens",
        lambda e: e.extract("--length", "2"),
        "--length 2 leaves no content tokens",
        "use --length 3 or more",
    ),
    Case(
        "length-beyond-model-positions",
        lambda e: e.extract("--length", "100"),
        "--length 100 exceeds the 64 positions",
        "use --length 64 or less",
    ),
    Case(
        "final-norm-before-on-an-encoder",
        lambda e: e.extract("--final-norm", "before"),
        "has no final norm after its last block",
        "drop --final-norm before",
    ),
    Case(
        "contexts-zero",
        lambda e: e.extract("--contexts", "0"),
        "--contexts must be >= 1, got 0",
        "e.g. --contexts 512",
        before_model=True,
    ),
    Case(
        "batch-size-zero",
        lambda e: e.extract("--batch-size", "0"),
        "--batch-size must be >= 1, got 0",
        "pass --batch-size 1 or more (default 32), or auto",
        before_model=True,
    ),
    Case(
        "batch-size-word",
        lambda e: e.extract("--batch-size", "lots"),
        "'lots': give a number of contexts per forward pass",
        "e.g. 32, or auto",
        before_model=True,
        usage=True,
    ),
    Case(
        "writer-threads-negative",
        lambda e: e.extract("--writer-threads", "-1"),
        "-1 is not in the range x>=0",
        "--writer-threads",
        before_model=True,
        usage=True,
    ),
    Case(
        "chunk-contexts-negative",
        lambda e: e.extract("--chunk-contexts", "-1"),
        "--chunk-contexts must be >= 0, got -1",
        "0 picks about 64 MB",
        before_model=True,
    ),
    Case("shard-malformed", lambda e: e.extract("--shard", "1-2"), "'1-2'", "use I/N", usage=True),
    Case(
        "shard-out-of-range",
        lambda e: e.extract("--shard", "2/2"),
        "shard 2/2 does not exist",
        "give I/N with 0 <= I < N",
        before_model=True,
    ),
    Case(
        "seed-negative",
        lambda e: e.extract("--seed", "-1"),
        "--seed must be >= 0, got -1",
        "pass --seed 0",
        before_model=True,
    ),
    Case(
        "dtype-unknown",
        lambda e: e.extract("--dtype", "float64"),
        "Invalid value for '--dtype'",
        "is not one of",
        usage=True,
        before_model=True,
    ),
    Case(
        "storage-dtype-unknown",
        lambda e: e.extract("--storage-dtype", "int8"),
        "Invalid value for '--storage-dtype'",
        "is not one of",
        usage=True,
        before_model=True,
    ),
    Case(
        "device-missing-gpu",
        lambda e: e.extract("--device", "cuda:7"),
        "device 'cuda:7' is not available",
        "use --device cpu",
        before_model=True,
    ),
    Case(
        "device-unknown-kind",
        lambda e: e.extract("--device", "tpu"),
        "device 'tpu' is not a device torch knows",
        "use --device cpu",
        before_model=True,
    ),
    Case(
        "device-malformed",
        lambda e: e.extract("--device", "cuda:x"),
        "device 'cuda:x' is not of the form",
        "use --device cpu",
        before_model=True,
    ),
    Case(
        "layers-out-of-range",
        lambda e: e.extract("--layers", "0,5"),
        "layers [5] do not exist",
        "pick --layers from 0..2",
    ),
    Case(
        "layers-negative",
        lambda e: e.extract("--layers", "-1"),
        "layer indices must be >= 0, got [-1]",
        "0 is the embedding output",
        before_model=True,
    ),
    Case(
        "layers-malformed",
        lambda e: e.extract("--layers", "first,last"),
        "'first,last'",
        "give comma-separated integers",
        usage=True,
        before_model=True,
    ),
    Case(
        "storage-option-malformed",
        lambda e: e.extract("--storage-option", "anon"),
        "'anon'",
        "use KEY=VALUE",
        usage=True,
        before_model=True,
    ),
    Case(
        "scheduler-and-workers",
        lambda e: e.extract("--scheduler", "tcp://127.0.0.1:1", "--workers", "2"),
        "--scheduler or --workers",
        "not both",
        usage=True,
        before_model=True,
    ),
    # model -----------------------------------------------------------------------------------
    Case(
        "model-folder-without-model",
        lambda e: e.extract("--model", _no_model(e)),
        "is not a model folder (no config.json in",
        "pass a folder saved with save_pretrained",
        before_model=True,
    ),
    Case(
        "model-path-is-a-file",
        lambda e: e.extract("--model", e.write("model.bin", b"\0" * 16)),
        "is a file, not a model folder",
        "pass the folder that holds",
        before_model=True,
    ),
    Case(
        "model-unknown-hub-name-offline",
        lambda e: e.extract("--model", "no-such-org/no-such-model"),
        "is not available locally and downloads are off",
        "hf download no-such-org/no-such-model",
    ),
    Case(
        "model-weights-truncated",
        lambda e: e.extract("--model", _truncated_model(e)),
        "a weights file is damaged or incomplete",
        "download or copy the model again",
    ),
    Case(
        "attn-implementation-unknown",
        lambda e: e.extract("--attn-implementation", "warp-speed"),
        "attention implementation 'warp-speed'",
        "--attn-implementation eager or sdpa",
    ),
    # existing and unwritable stores ------------------------------------------------------------
    Case(
        "out-is-a-file",
        lambda e: e.extract(out=e.write("h.zarr", "not a store")),
        "exists and is not a posctx hidden-state store",
        "choose another --out",
        before_model=True,
    ),
    Case(
        "out-is-a-folder-with-files",
        lambda e: e.extract(out=str(Path(e.write("results/notes.md", "mine")).parent)),
        "exists and is not a posctx hidden-state store",
        "choose another --out",
        before_model=True,
    ),
    Case(
        "out-below-a-file",
        lambda e: e.extract(out=e.write("blocker", "x") + "/h.zarr"),
        "cannot write a store",
        "choose a writable --out",
        before_model=True,
    ),
    Case(
        "out-read-only-location",
        lambda e: e.extract(out="posctxro://bucket/h.zarr"),
        "cannot write a store at posctxro://bucket/h.zarr (OSError: [Errno 30]",
        "choose another --out",
        before_model=True,
    ),
    Case(
        "out-is-a-decomposition-store",
        lambda e: e.extract(out=e.decomposition()),
        "exists and is a posctx decomposition store, not a posctx hidden-state store",
        "choose another --out",
        before_model=True,
    ),
    Case(
        "resume-with-another-model",
        lambda e: e.extract(model="gpt2", out=e.hidden()),
        "was made with different settings (model.name",
        "re-run with the store's settings",
        before_model=True,
    ),
    Case(
        "resume-with-other-settings",
        lambda e: e.extract("--seed", "1", out=e.hidden()),
        "corpus.seed: store has 0, asked 1",
        "re-run with the store's settings",
        before_model=True,
    ),
    Case(
        "resume-with-fewer-contexts",
        lambda e: e.extract("--contexts", "8", out=e.hidden()),
        "store.contexts: store has 12, asked 8",
        "choose another --out",
        before_model=True,
    ),
    Case(
        "resume-other-schema-version",
        lambda e: e.extract(out=_schema(e)),
        "has posctx schema 99 but this posctx reads schema 1",
        "upgrade posctx",
        before_model=True,
    ),
    # decompose -------------------------------------------------------------------------------
    Case(
        "decompose-missing-store",
        lambda e: ["decompose", e.path("nope.zarr"), "--out", e.path("d2.zarr")],
        "no posctx store at",
        "run `posctx extract",
        before_model=True,
    ),
    Case(
        "decompose-non-store-folder",
        lambda e: [
            "decompose",
            str(Path(e.write("results/notes.md", "mine")).parent),
            "--out",
            e.path("d2.zarr"),
        ],
        "is not a posctx hidden-state store",
        "pass the store `posctx extract` wrote",
    ),
    Case(
        "decompose-given-a-decomposition",
        lambda e: ["decompose", e.decomposition(), "--out", e.path("d2.zarr")],
        "is a posctx decomposition store",
        "pass the store `posctx extract` wrote",
    ),
    Case(
        "decompose-incomplete-store",
        lambda e: ["decompose", _incomplete(e), "--out", e.path("d2.zarr")],
        "1 of 3 blocks are not written yet",
        "re-run the same `posctx extract` command",
    ),
    Case(
        "decompose-missing-chunk-file",
        lambda e: ["decompose", _damaged(e), "--out", e.path("d2.zarr"), "--positions", "2:9"],
        "1 chunk of hidden is missing although its block is marked written (block 1; "
        "e.g. hidden/c/1/0/0/0): the store is damaged",
        "run `posctx validate",
    ),
    Case(
        "decompose-complete-only-missing-chunk-file",
        lambda e: [
            "decompose",
            _damaged(e, block=1, unmarked=2),
            "--out",
            e.path("d2.zarr"),
            "--complete-only",
            "--positions",
            "2:9",
        ],
        "1 chunk of hidden is missing although its block is marked written (block 1; "
        "e.g. hidden/c/1/0/0/0)",
        "re-run the same `posctx extract` command: it computes the blocks whose files",
    ),
    Case(
        "decompose-other-schema-version",
        lambda e: ["decompose", _schema(e), "--out", e.path("d2.zarr")],
        "has posctx schema 99 but this posctx reads schema 1",
        "upgrade posctx",
    ),
    Case(
        "decompose-positions-malformed",
        lambda e: ["decompose", e.hidden(), "--out", e.path("d2.zarr"), "--positions", "one:two"],
        "'one:two'",
        "use START:STOP",
        usage=True,
    ),
    Case(
        "decompose-positions-out-of-range",
        lambda e: ["decompose", e.hidden(), "--out", e.path("d2.zarr"), "--positions", "20:30"],
        "position selection 20:30 is empty",
        "choose position labels within 0..15",
    ),
    Case(
        "decompose-contexts-malformed",
        lambda e: ["decompose", e.hidden(), "--out", e.path("d2.zarr"), "--contexts", "1-5"],
        "'1-5'",
        "use START:STOP",
        usage=True,
    ),
    Case(
        "decompose-contexts-out-of-range",
        lambda e: ["decompose", e.hidden(), "--out", e.path("d2.zarr"), "--contexts", "50:60"],
        "context selection 50:60 is empty",
        "choose context labels within 0..11",
    ),
    Case(
        "decompose-unknown-topic",
        lambda e: ["decompose", e.hidden(), "--out", e.path("d2.zarr"), "--topic", "poetry"],
        "topic 'poetry' is not in",
        "its topics are 'code', 'docstrings', 'reference'",
    ),
    Case(
        "decompose-output-exists",
        lambda e: ["decompose", e.hidden(), "--out", e.decomposition()],
        "already holds data",
        "overwrite it with --overwrite",
    ),
    Case(
        "decompose-output-is-a-folder-with-files",
        lambda e: [
            "decompose",
            e.hidden(),
            "--out",
            str(Path(e.write("results/thesis.tex", "mine")).parent),
        ],
        "exists and is not a posctx decomposition store",
        "choose another --out",
    ),
    Case(
        "decompose-overwrite-a-folder-with-files",
        lambda e: [
            "decompose",
            e.hidden(),
            "--out",
            str(Path(e.write("results/thesis.tex", "mine")).parent),
            "--overwrite",
        ],
        "exists and is not a posctx decomposition store",
        "--overwrite replaces decomposition stores only",
    ),
    Case(
        "decompose-overwrite-another-zarr-store",
        lambda e: ["decompose", e.hidden(), "--out", _foreign_zarr(e), "--overwrite"],
        "is a Zarr store but not a posctx decomposition",
        "choose another --out",
    ),
    Case(
        "decompose-output-is-the-hidden-store",
        lambda e: ["decompose", e.hidden(), "--out", e.hidden(), "--overwrite"],
        "is a hidden-state store",
        "write the decomposition somewhere else",
    ),
    Case(
        "decompose-output-read-only",
        lambda e: ["decompose", e.hidden(), "--out", "posctxro://bucket/d.zarr"],
        "cannot write posctxro://bucket/d.zarr",
        "choose a writable --out",
    ),
    Case(
        "decompose-from-a-hidden-store",
        lambda e: ["decompose", e.hidden(), "--out", e.path("d2.zarr"), "--from", e.hidden()],
        "is a hidden-state store, not a posctx decomposition store",
        "run `posctx decompose",
    ),
    # report and info ---------------------------------------------------------------------------
    Case(
        "report-given-a-hidden-store",
        lambda e: ["report", e.hidden(), "--out", e.path("report"), "--quiet"],
        "is a hidden-state store, not a posctx decomposition store",
        "run `posctx decompose",
    ),
    Case(
        "report-missing-decomposition",
        lambda e: ["report", e.path("nope.zarr"), "--out", e.path("report")],
        "no decomposition store at",
        "posctx decompose STORE --out",
    ),
    Case(
        "report-out-is-a-file",
        lambda e: ["report", e.decomposition(), "--out", e.write("report.html", "mine"), "--quiet"],
        "cannot write the report to",
        "choose another --out folder",
    ),
    Case(
        "report-max-contexts-zero",
        lambda e: ["report", e.decomposition(), "--out", e.path("report"), "--max-contexts", "0"],
        "Invalid value for '--max-contexts'",
        "x>=1",
        usage=True,
    ),
    Case(
        "report-hidden-missing",
        lambda e: [
            "report",
            e.decomposition(),
            "--out",
            e.path("report"),
            "--hidden",
            e.path("nope.zarr"),
        ],
        "no posctx store at",
        "run `posctx extract",
    ),
    Case(
        "report-hidden-missing-chunk-file",
        lambda e: [
            "report",
            e.decomposition(),
            "--out",
            e.path("report"),
            "--hidden",
            _damaged(e, block=2),
            "--quiet",
        ],
        "1 chunk of hidden is missing although its block is marked written (block 2; "
        "e.g. hidden/c/2/0/0/0)",
        "run `posctx validate",
    ),
    Case(
        "info-missing-path",
        lambda e: ["info", e.path("nope.zarr")],
        "no posctx store at",
        "check the path",
    ),
    Case(
        "info-given-a-decomposition",
        lambda e: ["info", e.decomposition()],
        "is a posctx decomposition store",
        "pass the store `posctx extract` wrote",
    ),
    # the Python API raises the same errors -----------------------------------------------------
    Case(
        "python-store-config-length-zero",
        lambda e: _python("StoreConfig", length=0),
        "--length must be >= 2, got 0",
        "e.g. --length 128",
    ),
    Case(
        "python-store-config-contexts-zero",
        lambda e: _python("StoreConfig", contexts=0),
        "--contexts must be >= 1, got 0",
        "e.g. --contexts 512",
    ),
    Case(
        "python-store-config-storage-dtype",
        lambda e: _python("StoreConfig", storage_dtype="int8"),
        "storage dtype 'int8' is not one of float32, float16",
        "pass --storage-dtype float32",
    ),
    Case(
        "python-model-config-batch-size-zero",
        lambda e: _python("ModelConfig", batch_size=0),
        "--batch-size must be >= 1, got 0",
        "pass --batch-size 1 or more (default 32), or auto",
    ),
    Case(
        "python-model-config-dtype",
        lambda e: _python("ModelConfig", dtype="float64"),
        "model dtype 'float64' is not one of float32, bfloat16, float16",
        "pass --dtype float32",
    ),
    Case(
        "python-model-config-device-malformed",
        lambda e: _python("ModelConfig", device="cuda:x"),
        "device 'cuda:x' is not of the form",
        "use --device cpu",
    ),
    Case(
        "python-corpus-config-empty-spec",
        lambda e: _python("CorpusConfig", spec=""),
        "corpus spec is empty",
        "pass --corpus stdlib",
    ),
    Case(
        "python-load-model-unknown-device",
        lambda e: _load_model(e.model(), device="tpu"),
        "device 'tpu' is not a device torch knows",
        "use --device cpu",
    ),
    Case(
        "python-device-index-beyond-gpus",
        lambda e: _one_gpu_machine(e),
        "device 'cuda:7' is not available: this machine has 1 CUDA device (cuda:0)",
        "use --device cpu or --device cuda:0",
    ),
    Case(
        "python-extract-read-only-location",
        lambda e: _extract(e.model(), "posctxro://bucket/py.zarr"),
        "cannot write a store at posctxro://bucket/py.zarr",
        "choose another --out",
        before_model=True,
    ),
    # pipelines (python -m pipelines.NAME): the same conventions ---------------------------------
    Case(
        "pipeline-topic-corpus-too-small",
        lambda e: _pipeline(
            e, _small_topics(e), "--model", e.model(), "--contexts", "256", "--length", "16"
        ),
        "is too small for a balanced sample: topic 'cats' has",
        "lower --contexts, shorten --length, or pass --no-balance",
        entry="pipelines.topic_corpus",
    ),
    Case(
        "pipeline-config-missing",
        lambda e: _pipeline(e, "--config", e.path("run.toml")),
        "cannot read config file",
        "check the path",
        entry="pipelines.table1",
        before_model=True,
    ),
    Case(
        "pipeline-config-malformed-toml",
        lambda e: _pipeline(e, "--config", e.write("run.toml", "contexts = \n")),
        "is not valid TOML (Invalid value (at line 1, column 12))",
        "fix that line",
        entry="pipelines.table1",
        before_model=True,
    ),
    Case(
        "pipeline-config-unknown-key",
        lambda e: _pipeline(e, "--config", e.write("run.toml", 'modles = ["minilm"]\n')),
        "unknown key 'modles' (did you mean 'models'?)",
        "fix or remove it; the keys are models, corpora,",
        entry="pipelines.table1",
        before_model=True,
    ),
    Case(
        "pipeline-config-wrong-type",
        lambda e: _pipeline(e, "--config", e.write("run.toml", 'contexts = "many"\n')),
        "contexts must be an integer, got 'many'",
        "e.g. contexts = 512",
        entry="pipelines.table1",
        before_model=True,
    ),
    Case(
        "pipeline-config-value-out-of-range",
        lambda e: _pipeline(e, "--config", e.write("run.toml", "contexts = 0\n")),
        "run.toml: --contexts must be >= 1, got 0",
        "e.g. --contexts 512",
        entry="pipelines.table1",
        before_model=True,
    ),
    Case(
        "pipeline-table1-unknown-model",
        lambda e: _pipeline(e, "--models", f"{e.model()},no-such-org/no-such-model"),
        "cannot load model 'no-such-org/no-such-model': it is not available locally",
        "hf download no-such-org/no-such-model",
        entry="pipelines.table1",
        before_model=True,  # not even the first, good model is read
    ),
    Case(
        "pipeline-table1-unknown-corpus",
        lambda e: _pipeline(e, "--models", e.model(), "--corpora", f"stdlib,{e.path('nope')}"),
        "is not 'stdlib', an hf:NAME spec, or an existing file/folder (no such path)",
        "accepted are",
        entry="pipelines.table1",
        before_model=True,
    ),
    Case(
        "pipeline-table1-unknown-option",
        lambda e: _pipeline(e, "--model", e.model()),
        "No such option '--model'",
        "'--models'",
        entry="pipelines.table1",
        usage=True,
        before_model=True,
    ),
    Case(
        "pipeline-cluster-scheduler-and-workers",
        lambda e: _pipeline(e, "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"),
        "give --scheduler or --workers, not both",
        "--workers starts a local one",
        entry="pipelines.cluster",
        usage=True,
        before_model=True,
    ),
    Case(
        "pipeline-cluster-workers-zero",
        lambda e: _pipeline(e, "--workers", "0"),
        "Invalid value for '--workers'",
        "x>=1",
        entry="pipelines.cluster",
        usage=True,
        before_model=True,
    ),
    Case(
        "pipeline-training-config-unknown-key",
        lambda e: ["run", *_pipeline(e, "--config", e.write("train.toml", "levle = 1\n"))],
        "unknown keys 'levle' (did you mean 'level'?)",
        "fix or remove them",
        entry="pipelines.training",
        before_model=True,
    ),
    Case(
        "pipeline-training-level-on-addition",
        lambda e: ["run", *_pipeline(e, "--config", _training_config("addition"), "--level", "1")],
        "level applies to the text task only",
        'drop level, or use task = "text"',
        entry="pipelines.training",
        before_model=True,
    ),
    Case(
        "pipeline-training-other-settings",
        lambda e: ["run", *_pipeline(e, "--config", _training_config("tiny"), *_trained(e))],
        "holds a run trained with other settings (lr: stored 0.5, asked 0.003)",
        "run with its settings to resume it, or choose another --out",
        entry="pipelines.training",
        before_model=True,
    ),
    Case(
        "pipeline-training-compare-nothing",
        lambda e: ["compare", "--out", e.path("run")],
        "no finished setting under",
        "python -m pipelines.training suite --out",
        entry="pipelines.training",
        before_model=True,
    ),
]


def _pipeline(env: Env, *options: str) -> list[str]:
    """A pipeline's arguments: ``options``, then an ``--out`` inside the case's folder."""
    return [*options, "--out", env.path("run"), "--quiet"]


def _small_topics(env: Env) -> str:
    """A folder of two topic files, about 8 contexts of 16 tokens each: too few for 256."""
    for name in ("cats", "ships"):
        env.write(f"topics/{name}.txt", f"{name} sail and purr here. " * 20)
    return env.path("topics")


def _training_config(name: str) -> str:
    return str(Path(__file__).parents[1] / "pipelines" / "configs" / "training" / f"{name}.toml")


def _trained(env: Env) -> list[str]:
    """A checkpoint of the tiny setting as if trained with lr 0.5 in ``run``; no options."""
    import json

    from pipelines.train_config import TrainConfig

    record = TrainConfig.from_toml(_training_config("tiny")).training_record()
    record["lr"] = 0.5
    env.write(
        "run/text-level0/checkpoints/step-0000000/posctx_training.json",
        json.dumps({"step": 0, "training": record}),
    )
    return []


def _python(record: str, **kwargs: Any) -> Callable[[], object]:
    import posctx.config

    return lambda: getattr(posctx.config, record)(**kwargs)


def _load_model(model: str, **kwargs: Any) -> Callable[[], object]:
    from posctx.config import ModelConfig
    from posctx.model import load_model

    return lambda: load_model(ModelConfig(name=model, **kwargs))


def _one_gpu_machine(env: Env) -> Callable[[], object]:
    """check_device on a simulated machine with one CUDA GPU (torch.cuda answers patched)."""
    import torch

    from posctx.model import check_device

    env.monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    env.monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return lambda: check_device("cuda:7")


def _extract(model: str, out: str) -> Callable[[], object]:
    from posctx.config import ExtractConfig, ModelConfig, StoreConfig
    from posctx.extraction import extract

    config = ExtractConfig(model=ModelConfig(name=model), store=StoreConfig(contexts=12, length=16))
    return lambda: extract(config, out, progress=False)


def _params() -> Iterator[Any]:
    for case in CASES:
        marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
        yield pytest.param(case, id=case.id, marks=marks)


def test_case_ids_are_unique_and_each_has_a_docs_row() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    doc = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    section = doc.split("## Bad-input matrix", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    documented = [line.rstrip(" |").rsplit("| ", 1)[1].strip("` ") for line in rows]
    assert documented == ids  # one row per case, in the order of CASES


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(
    case: Case, stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path, stores, monkeypatch)
    action = case.setup(env)
    if case.before_model:
        import transformers

        def no_model(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"{case.id}: model files were read before the input was refused")

        for auto in (transformers.AutoModel, transformers.AutoTokenizer):
            monkeypatch.setattr(auto, "from_pretrained", no_model)
    before = _tree_digest(tmp_path)
    ro_before = dict(ReadOnlyMemoryFS.store)

    if callable(action):
        with pytest.raises(PosctxError) as info:
            action()
        message = str(info.value)
        assert "\n" not in message, message
    else:
        result = run_entry(case.entry, *action)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            trace = "".join(traceback.format_exception(*result.exc_info))  # type: ignore[misc]  # set with exception
            pytest.fail(f"{case.id}: uncaught {type(result.exception).__name__}:\n{trace}")
        assert result.exit_code == 2, (result.exit_code, result.output)
        assert "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert lines, result.output
        if case.usage:
            assert lines[-1].startswith("Error: "), result.stderr
            message = lines[-1]
        else:
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            message = lines[0]
    assert case.problem in message, f"problem {case.problem!r} not in: {message}"
    assert case.advice in message, f"advice {case.advice!r} not in: {message}"
    assert _tree_digest(tmp_path) == before, f"{case.id} changed or left files in {tmp_path}"
    assert dict(ReadOnlyMemoryFS.store) == ro_before
