"""The documentation site: every code example runs, every CLI line is current, the site builds.

* Each ```python block of a ``docs/*.md`` page is executed, the page's blocks in order in one
  namespace, in a fresh working folder; each ```pycon block (``>>>`` prompts) runs through
  doctest in that same namespace, so its shown output is checked too. A block preceded by
  ``<!-- skip: REASON -->`` is not run (one that needs a model hub, GPUs or a cluster); skips
  must give a reason and stay few.
* Shell blocks are not run, but every ``posctx ...`` command line in them (and in inline code
  of the docs and README.md) must name an existing subcommand and only options it has.
* ``mkdocs build --strict`` (what ``make docs`` and CI run) succeeds: no broken link, anchor,
  nav entry or docstring warning.
"""

from __future__ import annotations

import doctest
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

import posctx
from posctx.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

RUN_LANGS = {"python", "py"}
DOCTEST_LANGS = {"pycon"}
#: at most this many blocks may be skipped across the site.
MAX_SKIPS = 5

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_SKIP = re.compile(r"^\s*<!--\s*skip:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    number: int  # 1-based among the page's fenced blocks
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    lang: str
    code: str
    skip: str | None  # the reason, when marked to skip

    @property
    def where(self) -> str:
        return (
            f"docs/{self.page} block {self.number} (line {self.line}, {self.lang or 'no language'})"
        )


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with its language and skip marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        lang = (match["info"].split() or [""])[0].strip("{}.").lower()
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = _SKIP.match(previous)
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip())) :])
            j += 1
        blocks.append(
            Block(
                page=path.name,
                number=len(blocks) + 1,
                line=i + 1,
                end=j + 1,
                lang=lang,
                code="\n".join(body) + "\n",
                skip=skip["reason"] if skip else None,
            )
        )
        i = j + 1
    return blocks


ALL_BLOCKS = {path.name: fenced_blocks(path) for path in PAGES}
CODE_BLOCKS = {
    page: [b for b in blocks if b.lang in RUN_LANGS | DOCTEST_LANGS]
    for page, blocks in ALL_BLOCKS.items()
}
RUNNABLE_PAGES = sorted(
    page for page, blocks in CODE_BLOCKS.items() if any(b.skip is None for b in blocks)
)


def _run_doctest(block: Block, namespace: dict[str, object]) -> None:
    test = doctest.DocTestParser().get_doctest(
        block.code, namespace, block.where, block.page, block.line
    )
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.FAIL_FAST
    )
    report = io.StringIO()
    result = runner.run(test, out=report.write, clear_globs=False)
    namespace.update(test.globs)  # DocTest works on a copy: later blocks see its names
    if result.failed:
        pytest.fail(f"{block.where}: the shown output differs:\n{report.getvalue()}", pytrace=False)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's python/pycon blocks run in order, in one namespace, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for block in CODE_BLOCKS[page]:
        if block.skip is not None:
            continue
        if block.lang in DOCTEST_LANGS:
            _run_doctest(block, namespace)
            continue
        code = compile(block.code, block.where, "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            raise AssertionError(f"{block.where} failed: {type(exc).__name__}: {exc}") from exc


def test_skips_are_few_and_explained() -> None:
    blocks = [b for page in CODE_BLOCKS.values() for b in page]
    skipped = [b for b in blocks if b.skip is not None]
    run = len(blocks) - len(skipped)
    print(f"\ndocs code blocks: {run} run, {len(skipped)} skipped")
    for block in skipped:
        print(f"  skipped {block.where}: {block.skip}")
    assert run >= 20, "the docs lost their runnable examples?"
    assert len(skipped) <= MAX_SKIPS, [b.where for b in skipped]
    assert all(len(b.skip or "") >= 10 for b in skipped), "each skip needs a reason"


def test_skip_markers_precede_code_blocks() -> None:
    """A ``<!-- skip: -->`` marker that is not right before a code block is a mistake."""
    for path in PAGES:
        lines = path.read_text(encoding="utf-8").splitlines()
        marked = {i for i, line in enumerate(lines) if _SKIP.match(line)}
        used = {
            next(j for j in range(b.line - 2, -1, -1) if lines[j].strip())
            for b in ALL_BLOCKS[path.name]
            if b.skip is not None
        }
        assert marked == used, f"docs/{path.name}: skip markers not followed by a code block"


# --- command lines ------------------------------------------------------------------------

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text"}
_INLINE = re.compile(r"(?<!`)`(posctx\s[^`]+)`(?!`)")
_COMMAND_START = re.compile(r"^(?:\$\s+)?(?:\S*/)?posctx\s")


def _options(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _command_lines(text: str) -> list[str]:
    """``posctx ...`` lines of a shell block, continuation lines joined."""
    joined: list[str] = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if _COMMAND_START.match(line):
            joined.append(re.sub(r"^\$\s+", "", line))
    return joined


def _problems(command_line: str) -> list[str]:
    try:
        words = shlex.split(command_line, comments=True)
    except ValueError:
        words = command_line.split()
    words = words[1:]  # the program
    if not words or words[0] in {"--help", "-h", "--version"}:
        return []
    name, rest = words[0], words[1:]
    if name.isupper():  # a placeholder: `posctx COMMAND --help`
        return []
    if name not in cli.commands:
        return [f"no subcommand {name!r} (have: {', '.join(sorted(cli.commands))})"]
    known = _options(cli.commands[name])
    problems = []
    for word in rest:
        word = word.strip("[]")
        if word.startswith("-") and word not in {"-", "--"} and not re.fullmatch(r"-\d.*", word):
            option = word.split("=", 1)[0]
            if option not in known:
                problems.append(f"posctx {name} has no option {option}")
    return problems


def _all_command_lines() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in [*PAGES, ROOT / "README.md"]:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT).as_posix()
        blocks = ALL_BLOCKS.get(path.name) if path.parent == DOCS else fenced_blocks(path)
        for block in blocks or []:
            if block.lang in SHELL_LANGS:
                found += [
                    (f"{where} line {block.line}", line) for line in _command_lines(block.code)
                ]
        inside = {n for b in blocks or [] for n in range(b.line, b.end + 1)}
        prose = "\n".join(s for n, s in enumerate(text.splitlines(), 1) if n not in inside)
        found += [(where, " ".join(m[1].split())) for m in _INLINE.finditer(prose)]
    return found


def test_cli_lines_in_docs_are_current() -> None:
    lines = _all_command_lines()
    assert len(lines) >= 20, lines  # the parser still finds the docs' commands
    stale = [f"{where}: `{line}`: {p}" for where, line in lines for p in _problems(line)]
    assert not stale, "\n".join(stale)


def test_cli_checker_catches_stale_lines() -> None:
    assert _problems("posctx extract --model gpt2 --no-balance --out=x.zarr") == []
    assert _problems("posctx validate STORE [--json] [--no-scan]  # comment --bogus") == []
    assert _problems("posctx decompose run/h.zarr --out d.zarr --position 1:") == [
        "posctx decompose has no option --position"
    ]
    assert _problems("posctx decomp x")[0].startswith("no subcommand 'decomp'")
    assert _problems("posctx COMMAND --help") == []


# --- API reference and site ---------------------------------------------------------------


def test_api_page_documents_every_public_name() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: posctx\.(\w+)\s*$", text, flags=re.M))
    missing = sorted(set(posctx.__all__) - documented - {"__version__"})
    assert not missing, f"docs/api.md lacks ::: posctx.NAME for {missing}"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """The site builds with warnings as errors (broken links, anchors, nav, docstrings)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    cli_page = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert all(f"posctx {name}" in cli_page for name in cli.commands)


def test_sphinx_roles_extension() -> None:
    """The griffe extension of the API pages turns Sphinx roles into inline code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sphinx_roles", DOCS / "_ext" / "sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Made by :func:`write_decomposition`, see :mod:`~posctx.geometry.api`::\n\n    x = 1"
    assert module.convert(text) == "Made by `write_decomposition`, see `api`:\n\n    x = 1"
