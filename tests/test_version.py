"""One version: `t2i --version`, the package and the latest release in CHANGELOG.md agree."""

import re
from pathlib import Path

import pytest

import t2i
from t2i.cli import main

ROOT = Path(__file__).resolve().parents[1]


def latest_release(changelog: str) -> str:
    """The version of the first `## [X.Y.Z] - YYYY-MM-DD` heading (Unreleased does not count)."""
    m = re.search(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, flags=re.M)
    assert m, "CHANGELOG.md has no dated release heading"
    return m.group(1)


def test_latest_release_parser():
    text = "# Changelog\n\n## [Unreleased]\n\n## [1.2.0] - 2026-12-01\n\n## [1.1.0] - 2026-11-01\n"
    assert latest_release(text) == "1.2.0"


def test_cli_version_is_the_latest_changelog_release(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    release = latest_release((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
    assert capsys.readouterr().out.strip() == f"t2i {release}"
    assert t2i.__version__ == release


def test_pyproject_reads_the_version_from_the_package():
    """pyproject.toml holds no second copy of the version number."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, flags=re.M)
    assert re.search(r'^dynamic = \["version"\]', project, flags=re.M)
    assert re.search(r'^version = \{ attr = "t2i.__version__" \}', pyproject, flags=re.M)
