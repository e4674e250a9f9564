"""The user docs stay true to the code: the reading guide's table of code lines and the API
reference are what their scripts print now, every relative link and picture resolves, and the
README and the benchmarks' README stay short."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from core_lines import count, markdown  # noqa: E402

PAGES = ["README.md", "CHANGELOG.md", "benchmarks/README.md"] + [
    f"docs/{name}" for name in sorted(os.listdir(os.path.join(ROOT, "docs"))) if name.endswith(".md")]


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_the_reading_guide_shows_the_current_code_lines():
    assert markdown(count()["core"]) in _read("docs/reading-guide.md"), \
        "rerun python benchmarks/core_lines.py --markdown and paste the table into docs/reading-guide.md"


def test_the_api_reference_is_built_from_the_current_docstrings():
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    try:
        from build_api import build
    finally:
        sys.path.pop(0)
    assert build() == _read("docs/api.md"), "rerun python docs/build_api.py"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_and_pictures_resolve(page):
    text = _read(page)
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    folder = os.path.dirname(os.path.join(ROOT, page))
    missing = [t for t in targets if not t.startswith(("http://", "https://", "mailto:"))
               and not os.path.exists(os.path.join(folder, t))]
    assert missing == [], f"{page} links to files that are not there"


def test_readme_and_benchmarks_readme_stay_short():
    assert len(_read("README.md").splitlines()) <= 150
    assert len(_read("benchmarks/README.md").splitlines()) <= 120


def test_committed_pictures_are_small_and_tracked():
    files = subprocess.run(["git", "ls-files", "docs"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    pictures = [f for f in files if f.endswith(".png")]
    if not files:
        pytest.skip("not a git checkout: cannot tell which pictures are committed")
    assert pictures and all(os.path.getsize(os.path.join(ROOT, f)) < 400_000 for f in pictures)
