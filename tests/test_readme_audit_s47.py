"""README audit (session 47): what README.md and docker/README.md show a user must match today's CLI and package.

Every ``medseg ...`` line of their bash blocks parses with the command's own parser (the option exists for that
command, its value converts, required arguments are there); every option README names in passing exists; every
repository file and ``medseg.*`` Python name it points at exists. Nothing is run: these are drift checks, fast.
"""

from __future__ import annotations

import importlib
import re
import shlex

import pytest

from conftest import REPO

DOCS = ["README.md", "docker/README.md"]
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _root():
    import typer.main

    from medseg.cli import app

    return typer.main.get_command(app)


def _resolve(root, words: list[str]):
    """The (sub)command ``words`` name, and the words left for it."""
    cmd = root
    while hasattr(cmd, "commands") and words and words[0] in cmd.commands:
        cmd, words = cmd.commands[words[0]], words[1:]
    return cmd, words


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def _block_commands(doc: str) -> list[list[str]]:
    """``medseg`` command lines of a document's bash blocks (a ``docker run ... medseg:cpu CMD`` as ``medseg CMD``),
    continuation lines joined, comments and ``[...]`` brackets of optional parts dropped."""
    text = (REPO / doc).read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line)
            for part in re.split(r";|&&", line):
                words = shlex.split(part.replace("[", " ").replace("]", " "))
                image = [i for i, w in enumerate(words) if w in ("medseg:cpu", "medseg:gpu")]
                if words[:2] == ["docker", "run"] and image:
                    words = ["medseg", *words[image[-1] + 1:]]
                if words[:1] == ["medseg"] and "--help" not in words:
                    found.append(words)
    return found


_COMMANDS = [(doc, " ".join(w)) for doc in DOCS for w in _block_commands(doc)]


def test_the_readmes_show_commands():
    """The extraction itself works (else the parametrised test below would silently check nothing)."""
    assert sum(doc == "README.md" for doc, _ in _COMMANDS) >= 25
    assert sum(doc == "docker/README.md" for doc, _ in _COMMANDS) >= 3


@pytest.mark.parametrize("doc,line", _COMMANDS)
def test_every_command_line_in_the_readmes_parses(doc, line):
    """A renamed or removed option, a command moved, a value of the wrong type: README's example would answer
    'No such option' or 'Missing argument' to the user who copies it."""
    root = _root()
    cmd, rest = _resolve(root, shlex.split(line)[1:])
    assert cmd is not root, f"{doc}: no such command: {line}"
    cmd.make_context("medseg", rest)  # raises a usage error, naming the option, on any drift


def _inline_spans() -> list[tuple[str, str]]:
    """README.md's one-line code spans, each with its source line (a table row starts with '|')."""
    out = []
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        out += [(span, line) for span in re.findall(r"`([^`]+)`", line)]
    return out


def test_every_option_named_in_the_readme_text_exists():
    """`--rt-holes separate`, `medseg cells train --diameter 17`, ...: an option README names in its prose exists
    (for the command it names, if it names one). Spans of benchmark scripts, and the performance table's rows
    (benchmark options), are left out."""
    root = _root()
    every = set().union(*(_options(c) for c in _walk(root)))
    wrong = []
    for span, line in _inline_spans():
        if "benchmarks" in span or line.lstrip().startswith("|") or not _OPTION.search(span):
            continue
        head = span.split(";")[0]
        if head.startswith("medseg "):
            cmd, rest = _resolve(root, shlex.split(head.replace("|", " ").replace("[", " ").replace("]", " "))[1:])
            known = _options(cmd) | {"--help"}
            wrong += [f"{o} (of medseg {cmd.name}) in `{span}`" for o in _OPTION.findall(" ".join(rest))
                      if o not in known]
        elif span.startswith("--"):
            wrong += [f"{o} in `{span}`" for o in _OPTION.findall(span) if o not in every]
    assert not wrong, "options README names that no medseg command has: " + "; ".join(wrong)


def _walk(cmd):
    yield cmd
    for sub in getattr(cmd, "commands", {}).values():
        yield from _walk(sub)


def test_files_and_python_names_the_readmes_point_at_exist():
    """`benchmarks/x.py`, `tests/test_y.py`, `configs/z.yaml`, `docker/Dockerfile.gpu`, `.ci/demo`, and
    `medseg.a.b.c` names (modules, functions, classes, methods) all exist."""
    missing = []
    for doc in [*DOCS, *(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*.yaml"))]:
        text = (REPO / doc).read_text(encoding="utf-8")
        for path in set(re.findall(r"(?<![\w/.])((?:benchmarks|tests|configs|docker|\.ci)/[\w./-]*\w)", text)):
            if not (REPO / path).exists():
                missing.append(f"{doc}: {path}")
        for name in set(re.findall(r"(?<![\w.])medseg(?:\.[A-Za-z_]\w*)+", text)):
            if not _importable(name):
                missing.append(f"{doc}: {name}")
    assert not missing, missing


def _importable(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False
