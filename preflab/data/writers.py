"""Writing records: JSONL, one object per line, replaced atomically (a temp file, then rename),
so a reader never sees half a file and an interrupted write leaves the old one in place."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path


def _replace(path: str | Path, fill: Callable) -> Path:
    """Write through ``fill(file)`` into a temp file beside ``path``, then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        fill(f)
    os.replace(tmp, path)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return _replace(path, lambda f: f.write(text))


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    def fill(f) -> None:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    return _replace(path, fill)
