"""The repository's promises: the README's two commands exist and CI runs the same tests."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the quick start has a shell block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_start_is_exactly_two_commands() -> None:
    assert quick_start_commands() == ["scripts/demo", "scripts/test"]
    for script in ("scripts/demo", "scripts/test", ".ci/run"):
        path = ROOT / script
        assert path.is_file() and os.access(path, os.X_OK), script


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec \./scripts/test\s*$", ci, re.M)


def test_the_test_command_runs_the_whole_suite_and_the_checks() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    for step in (
        "ruff check",
        "ruff format --check",
        "mypy",
        'pytest -m "not slow"',
        "chromium",
        "pg_isready",
    ):
        assert step in script, step


def test_docs_the_readme_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link


def test_readme_screenshots_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    shots = re.findall(r"\((docs/screenshots/[^)]+\.png)\)", readme)
    assert len(set(shots)) >= 10
    for shot in shots:
        assert (ROOT / shot).is_file(), shot
