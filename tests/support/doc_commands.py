"""Reading the documented pipeline commands (README.md, docs/*.md, infra/) as the shell
would, and composing them as ``--cfg job`` would: the machinery of
tests/project/test_docs_commands.py.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import yaml

from pipelines.cli.submit import check_overrides, load_settings
from pipelines.jobs.settings import JOB_COMMANDS, PIPELINES, split_command

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INFRA = ROOT / "infra"
RAYJOBS = sorted((INFRA / "kuberay").glob("rayjob-*.yaml"))
#: The cluster pipelines.submit sends jobs to in docs/cluster.md; its pods' environment is the
#: environment of every submitted job (with pass_env and env on top).
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
INFRA_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file() and (
    p.suffix in (".yaml", ".yml") or p.name == "Dockerfile"))


def _storage_annotation() -> str:
    """The object-store prefix of the RayJobs' CHANGE THESE block (the same in each)."""
    values = {yaml.safe_load(p.read_text())["metadata"]["annotations"]["samdetr.io/storage"]
              for p in RAYJOBS}
    assert len(values) == 1, values
    return values.pop()


# ---- What a reader fills in, and the sample each one composes as -------------------------------

#: Capitalised words the docs use for a value the reader supplies -> the sample composed in its
#: place, wherever the word stands alone or as part of a path or URL.
PLACEHOLDERS = {
    # The bucket of docs/cluster.md and docs/sweeps.md: the one the RayJobs' CHANGE THESE block
    # names, so that a documented path and a RayJob's compare equal.
    "BUCKET": PurePosixPath(_storage_annotation().split("://", 1)[1]).parts[0],
    "HEAD": "ray-head.example.internal",                 # the Ray head's host name
    "HELD_OUT_SHARDS": "s3://bucket/shards/holdout",     # README: promote's held-out shard set
    "ID": "samdetr-train-20261207-120000-abc123",        # a job's submission id
    "K": "80",                                           # model.num_classes=K
}
#: ``key=...``: the value left out, by key -> the sample composed for it.
ELIDED_VALUES = {
    "shards": "s3://bucket/shards/holdout",
    "data.train_shards": "s3://bucket/shards/train",
    "data.val_shards": "s3://bucket/shards/val",
}
#: A ``...`` word of its own means "further overrides may follow": it is dropped.
ELIDED_WORD = "..."
#: Capitalised words that are values, not placeholders.
LITERALS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}
#: Hydra's own flags (not overrides) -> how many words they take; dropped before composing.
HYDRA_FLAGS = {"--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--help": 0, "--hydra-help": 0,
               "--info": 0, "--resolve": 0}
#: Module names that stand for every pipeline (infra/docker/Dockerfile: pipelines.<name>).
MODULE_PATTERNS = {"<name>": sorted(PIPELINES)}
PLACEHOLDER_WORD = re.compile(r"(?<![\w.-])(" + "|".join(PLACEHOLDERS) + r")(?![\w])")
CAPITALS = re.compile(r"(?<![\w.${])([A-Z][A-Z_]*[A-Z])(?![\w])")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


@dataclass
class Command:
    """One pipeline command as documented: where, which module, its words after the module
    (placeholders substituted, variables expanded) and the shell variables in effect."""

    where: str
    module: str
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)
    text: str = ""
    problem: str | None = None  # what stopped it being read (a placeholder, a variable)

    def __str__(self) -> str:
        return f"{self.where}: python -m pipelines.{self.module} {' '.join(self.words)}"


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` after a blank, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def _simple_commands(tokens: list[str]) -> list[list[str]]:
    out, current = [], []
    for token in tokens + [";"]:
        if token in (";", "&&", "||", "|", "&"):
            if current:
                out.append(current)
            current = []
        else:
            current.append(token)
    return out


def _expand(word: str, variables: dict[str, str], where: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"{where}: ${name} is not set in the documented commands")
        return variables[name]
    return VARIABLE.sub(value, word)


def _fill_placeholders(words: list[str], where: str) -> list[str]:
    out = []
    for word in words:
        if word == ELIDED_WORD:
            continue
        key, eq, value = word.partition("=")
        if eq and value == ELIDED_WORD:
            key = key.lstrip("+~")
            assert key in ELIDED_VALUES, (
                f"{where}: `{word}` leaves out a value with no sample in ELIDED_VALUES")
            word = f"{word.split('=', 1)[0]}={ELIDED_VALUES[key]}"
        unknown = set(CAPITALS.findall(word)) - LITERALS - set(PLACEHOLDERS)
        assert not unknown, (f"{where}: `{word}` holds {sorted(unknown)}, which is neither in "
                             "PLACEHOLDERS nor a known literal")
        word = PLACEHOLDER_WORD.sub(lambda m: PLACEHOLDERS[m.group(1)], word)
        assert ELIDED_WORD not in word, f"{where}: `{word}` elides part of a value"
        out.append(word)
    return out


def _pipeline_commands(text: str, where: str, variables: dict[str, str],
                       loops: list[tuple[str, list[str]]]) -> list[Command]:
    """The pipeline commands of one shell line (continuations joined), expanded over the
    enclosing ``for`` loops; ``variables`` and ``loops`` carry the shell's state across lines
    (a RayJob's entrypoint expands the variables of its head container's env)."""
    found = []
    for words in _simple_commands(_tokens(_strip_comment(text))):
        if words[0] == "for":
            assert len(words) >= 3 and words[2] == "in", f"{where}: cannot read `{text}`"
            loops.append((words[1], words[3:]))
            continue
        if words[0] == "done":
            loops.pop()
            continue
        if words[0] == "do":
            words = words[1:]
            if not words:
                continue
        if words[0] == "export":
            for assignment in words[1:]:
                name, _, value = assignment.partition("=")
                variables[name] = value
            continue
        prefix = {}
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            prefix[name] = value
        if len(words) < 3 or words[:2] != ["python", "-m"] or not words[2].startswith(
                "pipelines."):
            continue
        names = [name for name, _ in loops]
        module = words[2].removeprefix("pipelines.")
        for values in itertools.product(*(vals for _, vals in loops)):
            scope = {**variables, **dict(zip(names, values, strict=True))}
            env, rest, problem = dict(variables), [], None
            try:
                env.update({k: _expand(v, scope, where) for k, v in prefix.items()})
                rest = [_expand(w, {**scope, **prefix}, where)
                        for w in _fill_placeholders(words[3:], where)]
            except AssertionError as err:
                problem = str(err)
            for name in MODULE_PATTERNS.get(module, [module]):
                found.append(Command(where, name, rest, env, text, problem))
    return found


def _markdown_commands(path: Path, name: str | None = None) -> list[Command]:
    """The pipeline commands of a Markdown file, each at ``name:line`` (name: its path in the
    repository)."""
    lines = path.read_text().splitlines()
    name = name or path.relative_to(ROOT).as_posix()
    found: list[Command] = []
    prose = []  # the lines outside fenced blocks, fenced lines blanked (numbers kept)
    fence = None
    variables: dict[str, str] = {}
    loops: list[tuple[str, list[str]]] = []
    logical, start = "", 0
    for number, line in enumerate(lines, 1):
        marker = re.match(r"\s*(```+|~~~+)", line)
        if fence is None and marker:
            fence, variables, loops = marker.group(1), {}, []
            prose.append("")
            continue
        if fence is not None:
            prose.append("")
            if line.strip().startswith(fence):
                fence = None
                continue
            if not logical:
                start = number
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            if "pipelines." in logical or loops or logical.lstrip().startswith(("for ", "export ")):
                found += _pipeline_commands(logical, f"{name}:{start}", variables, loops)
            logical = ""
            continue
        prose.append(line)
    text = "\n".join(prose)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(match.group(1).split())
        if "python -m pipelines." in span:
            number = text.count("\n", 0, match.start()) + 1
            span = span[span.index("python -m pipelines."):]
            found += _pipeline_commands(span, f"{name}:{number}", {}, [])
    return found


def _infra_comment_commands(path: Path) -> list[Command]:
    """``python -m pipelines...`` in the comment lines of an infra file: a backquoted command,
    else the rest of the line less a trailing ``(reference)`` to the docs."""
    found = []
    name = path.relative_to(ROOT).as_posix()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        comment = line.partition("#")[2] if "#" in line else ""
        if "python -m pipelines." not in comment:
            continue
        spans = [s for s in re.findall(r"`([^`]+)`", comment) if "python -m pipelines." in s]
        if not spans:
            rest = comment[comment.index("python -m pipelines."):]
            spans = [re.sub(r"\s{2,}\([^)]*\)\s*$", "", rest)]
        for span in spans:
            span = span[span.index("python -m pipelines."):]
            found += _pipeline_commands(span, f"{name}:{number}", {}, [])
    return found


def head_env(path: Path) -> dict[str, str]:
    """The literal environment of the head container of a RayJob's or RayCluster's cluster,
    where a job's driver runs."""
    spec = yaml.safe_load(path.read_text())["spec"]
    head = spec.get("rayClusterSpec", spec)["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in head.get("env", []) if "value" in e}


def _rayjob_commands(path: Path) -> list[Command]:
    spec = yaml.safe_load(path.read_text())["spec"]
    text = spec["entrypoint"]
    number = next(i for i, line in enumerate(path.read_text().splitlines(), 1)
                  if line.strip().startswith("entrypoint:"))
    env = head_env(path)
    found = _pipeline_commands(text, f"{path.relative_to(ROOT).as_posix()}:{number}", env, [])
    assert found, f"{path}: the entrypoint runs no pipeline: {text}"
    return found


def all_commands() -> list[Command]:
    found = []
    for path in DOCS:
        found += _markdown_commands(path)
    for path in INFRA_FILES:
        found += _infra_comment_commands(path)
    for path in RAYJOBS:
        found += _rayjob_commands(path)
    return found


COMMANDS = all_commands()


# ---- Composition --------------------------------------------------------------------------------

def _hydra_overrides(words: list[str], where: str) -> list[str]:
    out, skip = [], 0
    for word in words:
        if skip:
            skip -= 1
        elif word in HYDRA_FLAGS:
            skip = HYDRA_FLAGS[word]
        else:
            assert not word.startswith("-"), f"{where}: `{word}` is not a Hydra flag or override"
            out.append(word)
    return out


class _Parsed(Exception):
    pass


def _check_demo(words: list[str], where: str) -> None:
    """``pipelines.demo`` takes argparse flags: parse them with its own parser, run nothing."""
    import argparse

    from pipelines.cli.demo import parser

    parse = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_only):
        try:
            parser().parse_args(words)
        except _Parsed:
            return
        except SystemExit as err:
            raise ValueError(f"{where}: pipelines.demo does not take {words}") from err
    raise AssertionError(f"{where}: pipelines.demo did not parse its flags")


def check_command(command: Command) -> None:
    """Raise (naming the line) unless ``command`` composes."""
    where, words = command.where, command.words
    assert command.problem is None, command.problem
    if command.module == "demo":
        _check_demo(words, where)
        return
    if command.module == "submit":
        if not words or {"-h", "--help"} & set(words):  # the tool named in prose, its help
            return
        setting_words, job_command, args = split_command(words)
        load_settings(setting_words)
        if job_command in PIPELINES:
            check_overrides(job_command, _hydra_overrides(args, where))
        elif job_command == "list":
            assert not args, f"{where}: list takes no argument, got {args}"
        else:
            assert job_command in JOB_COMMANDS and len(args) == 1, (
                f"{where}: {job_command} takes one job id, got {args}")
        return
    assert command.module in PIPELINES, (
        f"{where}: pipelines.{command.module} is not a pipeline ({', '.join(PIPELINES)}, submit, "
        "demo)")
    check_overrides(command.module, _hydra_overrides(words, where))


_CACHE: dict[tuple, dict] = {}


def composed(command: Command) -> dict[str, Any]:
    """The resolved config of a Hydra pipeline command (of the pipeline a submit line sends),
    with the command's shell variables as the environment (``${oc.env:...}``)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipelines.cli.config_store import register_defaults

    module, words = command.module, command.words
    env = dict(command.env)
    if module == "submit":
        env = job_env(command)
        module, words = split_command(words)[1:]
    key = (module, tuple(words), tuple(sorted(env.items())))
    if key not in _CACHE:
        register_defaults()
        with mock.patch.dict(os.environ, env), initialize_config_dir(
                config_dir=str(ROOT / "conf"), version_base="1.3"):
            for name in ("SAMDETR_STORAGE", "MLFLOW_TRACKING_URI"):
                if name not in env:
                    os.environ.pop(name, None)
            cfg = compose(config_name=PIPELINES[module],
                          overrides=_hydra_overrides(words, command.where))
            _CACHE[key] = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return _CACHE[key]


def find(source: str, module: str, *has: str, exact: bool = False) -> Command:
    """The one command of ``source`` (a file) that runs ``module`` (itself or through
    pipelines.submit) with every word of ``has`` (``exact``: with those words only)."""
    def runs(c: Command) -> str:
        if c.module == "submit" and c.words and c.words[0] != "list" and not (
                {"-h", "--help"} & set(c.words)):
            return split_command(c.words)[1]
        return c.module
    matches = [c for c in COMMANDS if c.where.split(":")[0] == source and runs(c) == module
               and all(w in c.words for w in has) and (not exact or c.words == list(has))
               and not {"-h", "--help"} & set(c.words)]  # a command's help runs nothing
    # The same command written twice (in prose and in a block) is one command.
    distinct = {(c.module, tuple(c.words), tuple(sorted(c.env.items()))): c for c in matches}
    assert len(distinct) == 1, (f"{source}: expected one pipelines.{module} command with "
                                f"{list(has)}, found {[str(c) for c in matches]}")
    return matches[0]


def job_env(command: Command) -> dict[str, str]:
    """The environment a pipelines.submit job runs in: the cluster's pods' (RAYCLUSTER), the
    shell's variables named in ``pass_env``, and ``env``."""
    settings = load_settings(split_command(command.words)[0])
    env = head_env(RAYCLUSTER)
    env.update({k: v for k, v in command.env.items() if k in settings.pass_env})
    env.update({k: str(v) for k, v in settings.env.items()})
    return env


def tracking_uri(command: Command, config: dict) -> str | None:
    """Where a command logs: its tracking_uri, else $MLFLOW_TRACKING_URI where it runs."""
    uri = config.get("tracking_uri") or config.get("tracking", {}).get("tracking_uri")
    if uri:
        return uri
    env = job_env(command) if command.module == "submit" else command.env
    return env.get("MLFLOW_TRACKING_URI")


def same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return PurePosixPath(os.path.normpath(a)) == PurePosixPath(os.path.normpath(b))


def checkpoint_of(train: dict, epoch: int | None = None) -> str:
    """The epoch folder a training run writes (pipelines/training/loop.py: epoch_NNNN)."""
    trainer = train["trainer"]
    epoch = trainer["epochs"] if epoch is None else epoch
    return f"{trainer['storage_path'].rstrip('/')}/{trainer['run_name']}/epoch_{epoch:04d}"


def model_uri(registered_model: str, alias: str) -> str:
    return f"models:/{registered_model}@{alias}"


