"""README.md and docs/*.md against the code: the README stays short, every relative link
points to a file (and heading) that exists, and every command shown names things that
exist.

Commands are read from fenced code blocks (one logical line each, backslash continuations
joined) and from inline code:

- ``python src/<x>.py ...`` (any python, e.g. ``.venv/bin/python``, env assignments before
  it) and ``audiolab-<x> ...``: the script or console script exists, and so does
  ``conf/<x>.yaml``. Every ``group=option`` override of a config group (a folder of
  ``conf/``) names an existing ``conf/<group>/<option>.yaml`` (each option of a
  ``a,b`` sweep). ``conf/<x>.yaml`` is composed once per distinct set of group choices,
  as ``tests/helpers.compose_config`` does, and every other ``key=value`` /
  ``key.sub=value`` override must be a key of it (``OmegaConf.select``). Skipped:
  ``hydra.*`` and ``hydra/...``, ``+``/``++``-prefixed keys (a ``+group=option`` is still
  checked as a group), and keys holding a placeholder (``<key>``, ``...``). ``eval.py``
  changes the checkpoint's stored ``data``/``model`` config with dotted overrides, so a
  ``data.*``/``model.*`` key it does not have itself must be a key of some
  ``conf/data/*.yaml`` / ``conf/model/*.yaml``.
- ``python scripts/<x>.py`` and ``bash scripts/<x>.sh``: the file exists.
- ``make <target> ...``: every target is a Makefile target; ``ARGS='...'`` holds
  ``train.py`` overrides, checked as above.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from helpers import compose_config
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
README = REPO / "README.md"
README_MAX_LINES = 300


def doc_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


# --- reading markdown


FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class Markdown:
    """A markdown file split into fenced code lines and prose (code spans included)."""

    path: Path
    code_lines: list[tuple[int, str]] = field(default_factory=list)  # logical lines
    prose: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Markdown:
        doc = cls(path)
        in_fence, pending, pending_line = False, "", 0
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FENCE.match(line):
                in_fence = not in_fence
                pending = ""
                continue
            if not in_fence:
                doc.prose.append((number, line))
                continue
            if not pending:
                pending_line = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            doc.code_lines.append((pending_line, pending + line))
            pending = ""
        return doc

    def prose_text(self) -> str:
        return "\n".join(line for _, line in self.prose)

    def inline_code(self) -> list[tuple[int, str]]:
        """Code spans of the prose (a span may run over a line break)."""
        spans, text = [], self.prose_text()
        starts = [0]
        for _, line in self.prose:
            starts.append(starts[-1] + len(line) + 1)
        for match in INLINE_CODE.finditer(text):
            index = sum(1 for s in starts[1:] if s <= match.start())
            spans.append((self.prose[index][0], match.group(1).replace("\n", " ")))
        return spans

    def links(self) -> list[tuple[int, str]]:
        found = []
        for number, line in self.prose:
            for match in LINK.finditer(INLINE_CODE.sub("", line)):
                found.append((number, match.group(1)))
        return found

    def anchors(self) -> set[str]:
        """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, a
        repeated id numbered."""
        seen: dict[str, int] = {}
        anchors = set()
        for _, line in self.prose:
            match = HEADING.match(line)
            if not match:
                continue
            slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
        return anchors


# --- commands


PLACEHOLDER = "PLACEHOLDER"
PY_COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?python3?\s+((?:src|scripts)/[\w./-]+\.py)(?=\s|$)(.*)$")
BASH_SCRIPT = re.compile(r"(?:^|\s)bash\s+(scripts/[\w./-]+\.sh)(?=\s|$)")
CONSOLE_COMMAND = re.compile(r"^\s*(?:\w+=\S+\s+)*audiolab-([\w-]+)(?=\s|$)(.*)$")
MAKE_COMMAND = re.compile(r"^\s*make\s+(.*)$")


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str
    config: str | None  # conf/<config>.yaml of an entry point, None for other scripts
    script: str  # what must exist: a path, audiolab-<x> or make <target>
    args: tuple[str, ...] = ()


def split_args(text: str) -> list[str]:
    """Shell words, with ``<placeholder>`` spans (which may hold spaces) made one word."""
    return shlex.split(re.sub(r"<[^<>]*>", PLACEHOLDER, text), comments=True)


def commands_in(snippet: str, where: str) -> list[Command]:
    found = []
    match = PY_COMMAND.search(snippet)
    if match:
        path, rest = match.group(1), match.group(2)
        config = Path(path).stem if path.startswith("src/") else None
        found.append(Command(where, snippet, config, path, tuple(split_args(rest))))
    match = BASH_SCRIPT.search(snippet)
    if match:
        found.append(Command(where, snippet, None, match.group(1)))
    match = CONSOLE_COMMAND.match(snippet)
    if match:
        name = match.group(1)
        found.append(
            Command(where, snippet, name, f"audiolab-{name}", tuple(split_args(match.group(2))))
        )
    match = MAKE_COMMAND.match(snippet)
    if match:
        words = split_args(match.group(1))
        for word in words:
            if "=" not in word and not word.startswith("-"):
                found.append(Command(where, snippet, None, f"make {word}"))
            elif word.startswith("ARGS="):
                found.append(
                    Command(where, snippet, "train", "make train", tuple(split_args(word[5:])))
                )
    return found


def all_commands(files: list[Path]) -> tuple[list[Command], list[str]]:
    commands, problems = [], []
    for path in files:
        doc = Markdown.read(path)
        name = path.relative_to(REPO)
        for number, snippet in [*doc.code_lines, *doc.inline_code()]:
            try:
                commands += commands_in(snippet, f"{name}:{number}")
            except ValueError as exc:  # shlex: unbalanced quotes
                problems.append(f"{name}:{number}: cannot split {snippet!r}: {exc}")
    return commands, problems


# --- what exists


def config_groups() -> set[str]:
    return {p.name for p in CONF.iterdir() if p.is_dir()}


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, flags=re.M))


def console_scripts() -> set[str]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return set(tomllib.load(handle)["project"]["scripts"])


@cache
def composed(config: str, choices: tuple[str, ...]) -> DictConfig:
    out = Path(tempfile.gettempdir()) / "audiolab_test_docs"  # never written: compose only
    return compose_config(config, list(choices), out)


_ABSENT = object()


def has_key(cfg: DictConfig, key: str) -> bool:
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationResolutionError):
        return True  # the key is there (its value is ??? or does not resolve here)
    return value is not _ABSENT


@cache
def group_files_have(group: str, key: str) -> bool:
    """Whether some ``conf/<group>/*.yaml`` has ``key`` (dotted, below the group)."""
    return any(has_key(OmegaConf.load(f), key) for f in (CONF / group).glob("*.yaml"))


def is_placeholder(text: str) -> bool:
    return PLACEHOLDER in text or "..." in text


def check_command(command: Command) -> list[str]:
    """What in ``command`` does not exist (empty when everything does)."""
    where = f"{command.where}: `{command.text.strip()}`"
    script = command.script
    if script.startswith("make "):
        target = script.split()[1]
        if target not in make_targets():
            return [f"{where}: no Makefile target {target!r}"]
    elif script.startswith("audiolab-"):
        if script not in console_scripts():
            return [f"{where}: no console script {script!r} in pyproject.toml"]
    elif not (REPO / script).is_file():
        return [f"{where}: {script} does not exist"]
    if command.config is None:
        return []
    if not (CONF / f"{command.config}.yaml").is_file():
        return [f"{where}: conf/{command.config}.yaml does not exist"]

    problems, choices, keys = [], [], []
    groups = config_groups()
    for arg in command.args:
        if "=" not in arg:
            continue  # -m, --help and other flags
        key, value = arg.split("=", 1)
        plus = re.match(r"^(\+\+|\+|~)", key)
        name = key[plus.end() :] if plus else key
        if name.startswith("hydra") or is_placeholder(name):
            continue
        if "." not in name and (name in groups or "/" in name):  # a config group
            folder = CONF / name
            for option in value.split(","):
                if option in ("null", "") or is_placeholder(option):
                    continue
                if not (folder / f"{option}.yaml").is_file():
                    problems.append(
                        f"{where}: {name}={option}: conf/{name}/{option}.yaml does not exist"
                    )
            first = value.split(",")[0]
            if not is_placeholder(first) and first != "":
                choices.append(f"{key}={first}")
        elif not plus:
            keys.append(name)
    if problems:
        return problems
    try:
        cfg = composed(command.config, tuple(choices))
    except Exception as exc:  # noqa: BLE001 - any composition error is the finding
        return [f"{where}: conf/{command.config}.yaml does not compose with {choices}: {exc}"]
    for key in keys:
        if has_key(cfg, key):
            continue
        stored = command.config == "eval" and key.split(".")[0] in ("data", "model")
        if stored and "." in key and group_files_have(key.split(".")[0], key.split(".", 1)[1]):
            continue
        problems.append(f"{where}: {key} is not a key of conf/{command.config}.yaml with {choices}")
    return problems


# --- the tests


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_relative_links_exist():
    problems = []
    anchors = {path: Markdown.read(path).anchors() for path in doc_files()}
    for path in doc_files():
        for number, target in Markdown.read(path).links():
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO)}:{number}: ({target})"
            if not linked.exists():
                problems.append(f"{where}: {file_part} does not exist")
            elif anchor and linked.suffix == ".md":
                known = anchors.get(linked) or Markdown.read(linked).anchors()
                if anchor not in known:
                    problems.append(f"{where}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


def test_commands_name_what_exists():
    commands, problems = all_commands(doc_files())
    # the parser finds what the docs show (a broken parser would pass everything)
    scripts = {c.script for c in commands}
    assert {"src/train.py", "src/eval.py", "src/predict.py", "src/separate.py"} <= scripts
    assert {"make train", "make test", "audiolab-train"} <= scripts
    for command in commands:
        problems += check_command(command)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "line, finding",
    [
        ("python src/train.py data=no_such_data", "conf/data/no_such_data.yaml does not exist"),
        ("python src/train.py -m trainer=cpu,no_such", "conf/trainer/no_such.yaml does not exist"),
        ("python src/train.py model.nett.capacity=small", "model.nett.capacity is not a key"),
        (
            "python src/train.py experiment=vae_fsdd model.net.capacity=tiny",
            "model.net.capacity is not a key",
        ),
        ("python src/predict.py inputs=a.wav", "inputs is not a key"),
        ("python src/eval.py ckpt=x.ckpt model.no_such_key=1", "model.no_such_key is not a key"),
        ("python src/no_such.py", "src/no_such.py does not exist"),
        ("audiolab-nope ckpt=x", "no console script 'audiolab-nope'"),
        ("make no-such-target", "no Makefile target 'no-such-target'"),
        ("make train ARGS='trainer.no_such=1'", "trainer.no_such is not a key"),
    ],
)
def test_broken_commands_are_found(line, finding):
    commands = commands_in(line, "example:1")
    problems = [p for c in commands for p in check_command(c)]
    assert any(finding in p for p in problems), problems


@pytest.mark.parametrize(
    "line",
    [
        "python src/train.py experiment=separation_synth callbacks=separation_museval",
        "MDB_STEM_SYNTH_ROOT=... python src/eval.py -m ckpt=<pitch checkpoint> data=synth_pitch,mdb_stem_synth",
        "python src/eval.py ckpt=... +callbacks=museval callbacks.museval.workers=4",
        "python src/eval.py ckpt=<vae checkpoint> model.classifier_ckpt=<classifier checkpoint>",
        "python src/train.py hparams_search=pitch_optuna hydra.sweeper.params.<key>=...",
        "python src/train.py +callbacks.weights_check._target_=x trainer.strategy.<arg>=1",
        "audiolab-predict input=a.wav output=out/",
        "make train ARGS='trainer.max_epochs=10'",
    ],
)
def test_good_commands_pass(line):
    commands = commands_in(line, "example:1")
    assert commands
    assert [p for c in commands for p in check_command(c)] == []
