"""Docs match the code: every `preflab ...` command shown in README.md and docs/ exists and
every flag it uses is one that command accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from preflab.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks tagged bash or sh, or not tagged."""
    blocks, current, language = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in ("", "bash", "sh"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def shown_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) for each `preflab ...` line inside a shell code block."""
    found = []
    for doc in DOCS:
        for block in code_blocks(doc.read_text(encoding="utf-8")):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.split("#", 1)[0].strip()
                words = shlex.split(line)
                if "preflab" not in words and "preflab.cli" not in words:
                    continue
                start = words.index("preflab.cli") if "preflab.cli" in words else words.index("preflab")
                found.append((doc.name, words[start + 1 :]))
    return found


def help_text(command: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_docs_show_commands():
    assert len(shown_commands()) >= 3


@pytest.mark.parametrize("doc, argv", shown_commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x[:1]))
def test_shown_command_and_flags_exist(doc, argv, capsys):
    assert argv and argv[0] in COMMANDS, f"{doc}: unknown command {argv[:1]}"
    command = [argv[0]]
    if len(argv) > 1 and not argv[1].startswith("-"):
        command.append(argv[1])  # a subcommand such as `world build`
    text = help_text(command, capsys)
    for word in argv:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert re.search(rf"{re.escape(flag)}\b", text), f"{doc}: {' '.join(command)} has no {flag}"
