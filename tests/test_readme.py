"""The README stays a newcomer's ten-minute read (issue 19): at most 12 KB, a Layout section, and every
relative link of it and of docs/ leads to a file of the repository (the detail lives in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_BYTES = 12_000


def test_readme_is_short_and_has_a_layout_section() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= MAX_BYTES, "move detail to docs/ and link it"
    assert re.search(r"^## Layout$", text, re.MULTILINE)


def test_links_of_the_readme_and_the_docs_lead_to_files() -> None:
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8"))
        local = [x for x in links if not re.match(r"[a-z]+:", x)]
        if page == README:
            assert any(x.startswith("docs/") for x in local), "the README links its docs pages"
        missing += [f"{page.relative_to(ROOT)} -> {x}" for x in local if not (page.parent / x).exists()]
    assert not missing, f"links to missing files: {missing}"
