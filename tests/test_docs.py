"""The documentation cannot drift from the code it describes: the command-line reference is the
parser's own help, and every page the README and the docs link to exists.

After changing an option: ``CMRSEG_WRITE_DOCS=1 python -m pytest tests/test_docs.py`` rewrites
docs/reference/cli.md from the parser."""

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI_DOC = REPO / "docs" / "reference" / "cli.md"


def cli_reference() -> str:
    """docs/reference/cli.md: every command's ``--help``, 100 columns wide."""
    from cmrseg.cli import build_parser

    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # argparse keeps subparsers there
    parts = ["# Command-line reference", "",
             "Every command's `--help`, as the parser prints it (generated: `CMRSEG_WRITE_DOCS=1 python -m pytest "
             "tests/test_docs.py`; the suite fails when this page and the parser differ).", ""]
    for name, sub in commands.items():
        parts += [f"## `cmrseg {name}`", "", "```", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def test_the_cli_reference_is_the_parsers_help():
    text = cli_reference()
    if os.environ.get("CMRSEG_WRITE_DOCS"):
        CLI_DOC.write_text(text)
    assert CLI_DOC.read_text() == text, "docs/reference/cli.md is out of date: CMRSEG_WRITE_DOCS=1 rewrites it"


def test_every_linked_page_exists():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(REPO)} -> {target}")
    assert not missing, missing
