"""People in the loop: pairs written out for people to label, and their labels read back.

``export_for_people`` writes a CSV or JSONL file with an empty ``label`` column::

    id,prompt,a,b,label              pairs: label is a or b (the better one), or skip
    id,prompt,completion,label       single completions (KTO): good or bad, or skip

Each pair's two completions are shown in a random (seeded) order, so the file does not
reveal which one a judge preferred. ``read_people_labels`` reads the filled file back (any
format ``preflab.data.read_records`` reads) and refuses a file with a row whose label is
empty or not one of those words, naming the file, the line and the field, and how many other
rows are refused; ``good``/``bad`` may also be written ``true``/``false`` or ``1``/``0``.
Pairs become ``{"prompt", "chosen", "rejected"}`` records, single completions ``{"prompt",
"completion", "label"}``: the preference and unpaired formats the trainers read.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from preflab.data.readers import read_records
from preflab.data.writers import write_text
from preflab.errors import DataError

PAIR_COLUMNS = ("id", "prompt", "a", "b", "label")
SINGLE_COLUMNS = ("id", "prompt", "completion", "label")
PAIR_LABELS = {"a": 0, "b": 1, "skip": None}
SINGLE_LABELS = {"good": True, "true": True, "1": True, "bad": False, "false": False,
                 "0": False, "skip": None}
FORMATS = (".csv", ".jsonl")


def export_for_people(path: str | Path, items: list[dict], *, seed: int = 0) -> int:
    """Write ``items`` (``{"prompt", "chosen", "rejected"}`` pairs, or ``{"prompt",
    "completion"}`` singles) with an empty label column; return the rows written."""
    rng = random.Random(seed)
    rows = []
    for i, item in enumerate(items, start=1):
        if "completion" in item:
            rows.append({"id": i, "prompt": item["prompt"], "completion": item["completion"],
                         "label": ""})
        else:
            a, b = item["chosen"], item["rejected"]
            if rng.random() < 0.5:
                a, b = b, a
            rows.append({"id": i, "prompt": item["prompt"], "a": a, "b": b, "label": ""})
    columns = SINGLE_COLUMNS if items and "completion" in items[0] else PAIR_COLUMNS
    if Path(path).suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_text(path, text)
    return len(rows)


def _text(record, name: str) -> str | None:
    value = record.data.get(name)
    return value if isinstance(value, str) and value.strip() else None


def _row_problem(record) -> tuple[str, str, str] | None:
    """(field, problem, expected) for a row that cannot be used, or None."""
    data = record.data
    single = "completion" in data
    names = ("prompt", "completion") if single else ("prompt", "a", "b")
    for name in names:
        if _text(record, name) is None:
            return name, f"the {name} is missing or empty", "non-empty text"
    if not single and data["a"] == data["b"]:
        return "b", "a and b are the same text", "two different completions"
    label = data.get("label")
    allowed = SINGLE_LABELS if single else PAIR_LABELS
    words = "good or bad (or true/false, 1/0), or skip" if single else "a or b, or skip"
    if isinstance(label, bool) and single:
        return None
    text = str(label).strip().lower() if isinstance(label, (str, int)) else None
    if text not in allowed:
        shown = "empty" if label in (None, "") else f"{str(label)[:40]!r}"
        return "label", f"the label is {shown}", words
    return None


def read_people_labels(path: str) -> tuple[list[dict], dict]:
    """The labelled records of a filled file and counts; DataError on any bad row."""
    records = read_records(path)
    single = "completion" in records[0].data
    bad = []
    for record in records:
        if ("completion" in record.data) != single:
            bad.append((record, "completion" if single else "a",
                        "the row mixes single completions and pairs",
                        "the columns of the exported file"))
            continue
        problem = _row_problem(record)
        if problem:
            bad.append((record, *problem))
    if bad:
        record, name, problem, expected = bad[0]
        more = ""
        if len(bad) > 1:
            lines = ", ".join(str(r.line) for r, *_ in bad[1:6])
            rows = "1 more row is" if len(bad) == 2 else f"{len(bad) - 1} more rows are"
            more = (f"; {rows} refused (line{'s' if len(bad) > 2 else ''} {lines}"
                    f"{', ...' if len(bad) > 6 else ''})")
        raise DataError(problem + more, path=record.path, line=record.line, field=name,
                        expected=expected)
    out, skipped = [], 0
    for record in records:
        data = record.data
        label = data["label"]
        key = label if isinstance(label, bool) else str(label).strip().lower()
        if single:
            value = label if isinstance(label, bool) else SINGLE_LABELS[key]
            if value is None:
                skipped += 1
                continue
            out.append({"prompt": data["prompt"], "completion": data["completion"],
                        "label": value})
        else:
            side = PAIR_LABELS[key]
            if side is None:
                skipped += 1
                continue
            chosen, rejected = (data["a"], data["b"]) if side == 0 else (data["b"], data["a"])
            out.append({"prompt": data["prompt"], "chosen": chosen, "rejected": rejected})
    return out, {"rows": len(records), "labelled": len(out), "skipped": skipped,
                 "kind": "unpaired" if single else "pairs"}
