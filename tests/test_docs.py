"""The docs cannot rot: their runnable snippets run, their CLI flags exist, their code references resolve.

1. Every fenced block whose info string is exactly `python run` in README.md, README.zh-CN.md and docs/*.md is
   executed in a fresh namespace inside a temporary working directory (an alarm stops one that hangs; how long a
   block takes is not tested). Plain `python` blocks are illustrations and are not run.
2. Every `--flag` written after a command (`python train.py`, `torchrun ... train.py`, `minimind SUB [ACTION]`)
   in a code block or an inline code span must be a flag of that command's parser (built in-process).
3. Every `minimind/....py` path in docs/architecture.md exists, and every `minimind/x.py: Name` or
   `minimind/x.py: Class.method` reference names a def/class in that file.
The checkers themselves are tested on small right and wrong inputs, and the block extractor against every
`python run` fence in the docs, so that a block it misses cannot pass unrun.
"""

import argparse
import re
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "README.zh-CN.md", *sorted((ROOT / "docs").glob("*.md"))]
HANG_S = 300  # a hang guard, not a time budget: timings belong in benchmarks/

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(info string, body, first line number) of every fenced block."""
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 2) for m in FENCE.finditer(text)]


def runnable_blocks():
    found = []
    for doc in DOCS:
        for info, body, line in fenced_blocks(doc.read_text(encoding="utf-8")):
            if info == "python run":
                found.append(pytest.param(doc, line, body, id=f"{doc.relative_to(ROOT)}:{line}"))
    return found


def test_fenced_blocks_give_info_body_and_first_line():
    text = "a\n```python run\nx = 1\ny = 2\n```\ntext\n```python\nz = 3\n```\n```\nplain\n```\n"
    assert fenced_blocks(text) == [("python run", "x = 1\ny = 2\n", 3), ("python", "z = 3\n", 8),
                                   ("", "plain\n", 11)]


def test_every_python_run_fence_in_the_docs_is_run():
    """The extractor finds each line that opens a `python run` block, at the line after it: a block it missed (say,
    swallowed by an unclosed fence above it) would otherwise never run and never fail."""
    opened = sorted((str(doc.relative_to(ROOT)), n + 1) for doc in DOCS
                    for n, text in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1)
                    if text.strip() == "```python run")
    found = sorted((str(p.values[0].relative_to(ROOT)), p.values[1]) for p in runnable_blocks())
    assert opened and found == opened


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


@pytest.fixture(scope="module")
def kernels_built():
    """minimind's CPU kernels loaded before any block runs, from the usual cache: a block that is the first in its
    process to use them (an int8 layer, the native decode step) would otherwise build them again (~15 s) into the
    empty cache it is given."""
    from minimind.kernels.build import vector_ops

    return vector_ops()


@pytest.mark.parametrize("doc, line, code", runnable_blocks())
def test_runnable_block(doc, line, code, tmp_path, monkeypatch, kernels_built):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path / "cache"))
    namespace = {"__name__": "__docs__"}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        exec(compile(code, f"{doc.relative_to(ROOT)}:{line}", "exec"), namespace)  # noqa: S102 - running the docs is the point
    except _Timeout:
        pytest.fail(f"{doc.name}:{line}: block still running after {HANG_S} s: it hangs")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- CLI flags ---------------------------------------------------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def parsers() -> dict[str, set[str]]:
    """Command name ("train.py", "minimind lora", "minimind data prepare", ...) -> its flags."""
    from minimind import cli

    table = {"train.py": _flags(cli.command_parser("train")), "minimind": _flags(cli.build_parser())}
    for name, sub in _subparsers(cli.build_parser()).items():
        table[f"minimind {name}"] = _flags(sub)
        for action, subsub in _subparsers(sub).items():
            table[f"minimind {name} {action}"] = _flags(subsub)
    return table


COMMAND = re.compile(r"(?:python3? |torchrun [^`\n|;&]*?)(train\.py)\b|\bminimind((?: [a-z]+){1,2})\b")
FLAG = re.compile(r"(?<![\w-])--([a-zA-Z][\w-]*)")


def command_flags(text: str, table: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(command, --flag) for every flag written after a command, up to the end of that command."""
    found = []
    for segment in re.split(r"\n|\|\||\||&&|;", text):
        for m in COMMAND.finditer(segment):
            if m.group(1):
                name = "train.py"
            else:
                words = m.group(2).split()
                name = "minimind"
                for w in words:  # the longest known command: "minimind data prepare" over "minimind data"
                    if f"{name} {w}" in table:
                        name = f"{name} {w}"
                    else:
                        break
            rest = segment[m.end():]
            nxt = COMMAND.search(rest)
            rest = rest[:nxt.start()] if nxt else rest
            found += [(name, "--" + f) for f in FLAG.findall(rest)]
    return found


def code_texts(text: str) -> list[str]:
    """Code blocks (continuation lines joined) and inline code spans."""
    out = []
    for info, body, _ in fenced_blocks(text):
        if info in ("bash", "sh", "shell", "console", ""):
            out.append(re.sub(r"\\\n\s*", " ", body))
    prose = FENCE.sub("", text)
    out += re.findall(r"`([^`\n]+)`", prose)
    return out


def unknown_flags(text: str, table=None) -> list[str]:
    table = table or parsers()
    bad = []
    for code in code_texts(text):
        for name, flag in command_flags(code, table):
            if flag not in table[name] and not (name == "minimind" and flag in ("--help", "--version")):
                bad.append(f"{name} {flag}")
    return bad


def test_unknown_flags_names_the_command_and_the_flag():
    table = parsers()
    assert unknown_flags("`python train.py --epochs 1`", table) == []
    assert unknown_flags("`python train.py --no_such_flag 1`", table) == ["train.py --no_such_flag"]
    assert unknown_flags("```bash\nminimind data prepare --data x \\\n  --bogus y\n```\n", table) == [
        "minimind data prepare --bogus"]
    assert unknown_flags("`torchrun --nproc_per_node 2 train.py --fsdp`", table) == []
    assert unknown_flags("`minimind generate out --prompt hi --fsdp`", table) == ["minimind generate --fsdp"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_documented_flag_exists(doc):
    text = doc.read_text(encoding="utf-8")
    table = parsers()
    checked = [c for code in code_texts(text) for c in command_flags(code, table)]
    bad = unknown_flags(text, table)
    assert not bad, f"{doc.name} mentions flags the CLI does not have: {bad}"
    if doc.name in ("README.md", "training_guide.md", "quick_reference.md"):
        assert len(checked) >= 10, f"{doc.name}: expected many command flags, found {len(checked)}"


def loose_flags(text: str, table=None) -> list[str]:
    """Flags written on their own in an inline code span (`--resume`, `--dtype bf16`) that no command has."""
    table = table or parsers()
    known = set().union(*table.values())
    prose = FENCE.sub("", text)
    spans = [s for s in re.findall(r"`([^`\n]+)`", prose) if not COMMAND.search(s)]
    return sorted({"--" + f for s in spans if s.startswith("--") for f in FLAG.findall(s)} - known)


def test_loose_flags_are_the_ones_no_command_has():
    table = parsers()
    assert loose_flags("use `--resume` and `--dtype bf16`", table) == []
    assert loose_flags("use `--no_such_flag` (and `x --ignored`)", table) == ["--no_such_flag"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_loose_flag_exists(doc):
    bad = loose_flags(doc.read_text(encoding="utf-8"))
    assert not bad, f"{doc.name} mentions flags no command has: {bad}"


def test_readme_command_blocks_are_the_same_in_both_languages():
    en = [b for i, b, _ in fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8")) if i == "bash"][:2]
    zh = [b for i, b, _ in fenced_blocks((ROOT / "README.zh-CN.md").read_text(encoding="utf-8")) if i == "bash"][:2]
    assert len(en) == 2 and en == zh


# --- code references in docs/architecture.md ----------------------------------------------------------------------

REF = re.compile(r"(minimind/[\w/]+\.py)(?::\s*`?([A-Za-z_][\w.]*))?")


def bad_references(text: str) -> list[str]:
    bad = []
    for path, name in REF.findall(text):
        file = ROOT / path
        if not file.is_file():
            bad.append(path)
            continue
        if not name:
            continue
        source = file.read_text(encoding="utf-8")
        for part in name.split("."):
            if not re.search(rf"^\s*(?:def|class)\s+{re.escape(part)}\b|^{re.escape(part)}\s*=", source, re.MULTILINE):
                bad.append(f"{path}: {name}")
                break
    return bad


def test_bad_references_name_missing_files_and_definitions():
    assert bad_references("see `minimind/model.py: RMSNorm.forward`") == []
    assert bad_references("see `minimind/model.py: NoSuchThing`") == ["minimind/model.py: NoSuchThing"]
    assert bad_references("see `minimind/model.py: RMSNorm.no_such`") == ["minimind/model.py: RMSNorm.no_such"]
    assert bad_references("see minimind/nowhere.py") == ["minimind/nowhere.py"]


def test_architecture_references_exist():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    refs = REF.findall(text)
    assert len([r for r in refs if r[1]]) >= 10
    assert not bad_references(text)
