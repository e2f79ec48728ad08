"""The documentation a clone gets: every relative link in README.md and docs/ names a file in
the repository (a link outside it is dead for anyone who clones the project)."""

from __future__ import annotations

import re

import pytest

from tests.support.paths import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_name_files_inside_the_repository(doc):
    bad = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor in the same page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(REPO) or not path.exists():
            bad.append(target)
    assert not bad, f"{doc.relative_to(REPO)} links to files not in the repository: {bad}"


def test_readme_links_the_architecture_document():
    assert "](docs/architecture.md)" in (REPO / "README.md").read_text(encoding="utf-8")
