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


def shown_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) for each `preflab ...` line inside a fenced code block."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.split("#", 1)[0].strip()
                if "preflab" not in line:
                    continue
                words = shlex.split(line)
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
