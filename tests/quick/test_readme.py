"""The README is the front door: its commands must be the ones CI runs and the files must exist."""
from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_test_command_is_what_ci_runs():
    test_command = next(b.strip() for b in bash_blocks() if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_quickstart_command_runs_the_quickstart_recipe():
    quickstart = bash_blocks()[0].strip()
    assert quickstart.endswith(".venv/bin/python -m runner recipes/quickstart.json")
    assert "-c constraints.txt" in quickstart and "torch==2.13.0" in quickstart


def test_files_the_readme_names_exist():
    for path in re.findall(r"(?:recipes|accelerate_configs|docs|schemas)/[\w./-]+\.(?:json|yaml|md)", README):
        assert (ROOT / path).is_file(), path


def test_every_docs_page_is_linked_from_the_readme():
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", README))
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, sorted(pages - linked)


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_in_the_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name}: {target}"
            assert ROOT.resolve() in resolved.parents or resolved == ROOT.resolve(), f"{page.name}: {target}"
            if anchor and resolved.suffix == ".md":
                assert anchor in _anchors(resolved.read_text()), f"{page.name}: {target}"


def test_repo_files_the_docs_name_exist():
    for page in sorted((ROOT / "docs").glob("*.md")):
        for path in re.findall(r"`((?:runner|bench|tests|recipes|schemas|accelerate_configs)/[\w./-]+\.(?:py|json|yaml|md))`",
                               page.read_text()):
            assert (ROOT / path).is_file(), f"{page.name}: {path}"
