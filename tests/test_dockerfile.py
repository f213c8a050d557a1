"""The Dockerfile, checked without a Docker engine: it parses, its stages fit together, the
final image runs as a non-root user with no build tools, and its entrypoint exists."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.steps if ins == instruction]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Instructions as BuildKit reads them: comments, `\\` continuations, ARGs before FROM."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the file ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        assert instruction in INSTRUCTIONS, f"unknown instruction: {line}"
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, f"bad FROM: {line}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], match.group(1))
            stages.append(Stage(base, match.group(2)))
        elif not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].steps.append((instruction, args.strip()))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def test_it_parses_into_a_build_and_a_final_stage_on_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", stage.base), stage.base
    names = {s.name for s in stages if s.name}
    final = stages[-1]
    for args in final.all("COPY"):
        source = re.match(r"--from=(\S+)", args)
        assert source and source.group(1) in names, f"final stage copies from outside: {args}"
    # Everything the build stage copies in exists in the repository.
    for args in stages[0].all("COPY"):
        *sources, _ = args.split()
        for src in sources:
            assert (REPO / src).exists(), src


def test_the_final_image_runs_as_the_deployments_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the final stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID (runAsNonRoot checks it)"
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    deployment = yaml.safe_load((REPO / "deploy" / "manager" / "deployment.yaml").read_text())
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == int(uid)


def test_no_build_tools_or_installs_in_the_final_image(stages: list[Stage]) -> None:
    final = stages[-1]
    for command in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|apk)\s+install\b", command), command
        assert not re.search(r"\bpip3?\s+install\b", command), command
        assert not re.search(r"\b(gcc|make|build-essential)\b", command), command
    assert not final.all("ADD")


def test_the_entrypoint_is_image_ancestry_run_and_exists(stages: list[Stage]) -> None:
    final = stages[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["image-ancestry", "run"]  # exec form: signals reach it
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["image-ancestry"] == "image_ancestry.cli:main"
    # The console script lives in the virtualenv the final stage puts first on PATH.
    (copied,) = [a for a in final.all("COPY") if a.startswith("--from=")]
    venv = copied.split()[-1]
    assert any(f"PATH={venv}/bin:" in env for env in final.all("ENV"))
    # And `run` is a real subcommand with the option the probes rely on.
    result = subprocess.run(
        [sys.executable, "-m", "image_ancestry.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--liveness" in result.stdout and "--webhook" in result.stdout


def test_the_parser_rejects_what_docker_would() -> None:
    """The checks above mean something only if the parser can say no."""
    with pytest.raises(AssertionError):
        parse("FROM python:3.11-slim\nRUNN echo hi\n")
    with pytest.raises(AssertionError):
        parse("COPY . .\nFROM python:3.11-slim\n")
    with pytest.raises(AssertionError):
        parse("FROM python:3.11-slim\nRUN echo \\\n")
