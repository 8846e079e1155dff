"""The numbers README.md and docs/ take from a comparison agree with the comparisons kept in
docs/results/ (``scripts/docs_results.py``), and an edit by hand is caught."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def docs_results():
    spec = importlib.util.spec_from_file_location("docs_results",
                                                  ROOT / "scripts" / "docs_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_part_agrees_with_its_kept_comparison(docs_results):
    assert docs_results.main(["--check"]) == 0


def test_readme_takes_its_table_and_main_result_from_the_full_comparison(docs_results):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    kinds = {(m["source"], m["kind"]) for m in docs_results.BLOCK.finditer(text)}
    assert {("full", "table-short"), ("full", "quality")} <= kinds
    for source in {m["source"] for m in docs_results.BLOCK.finditer(text)}:
        assert (ROOT / "docs" / "results" / source / "results.json").is_file()


def test_one_number_edited_by_hand_in_readme_fails_the_check(docs_results):
    """Change one digit inside README's generated table: the check names README.md and the
    line of the block; the same for a generated value in a sentence."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert docs_results.disagreements(text, "README.md") == []
    block = next(m for m in docs_results.BLOCK.finditer(text) if m["kind"] == "table-short")
    digit = re.search(r"\d", block["body"])
    at = block.start("body") + digit.start()
    edited = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1:]
    problems = docs_results.disagreements(edited, "README.md")
    line = text.count("\n", 0, block.start()) + 1
    assert problems == [f"README.md:{line}: the full table-short block differs from "
                        "docs/results/full/results.json"]
    value = next(docs_results.VALUE.finditer(text))
    edited = text[:value.start("body")] + "9" + text[value.start("body"):]
    problems = docs_results.disagreements(edited, "README.md")
    assert len(problems) == 1 and value["name"] in problems[0]


def test_a_path_value_reads_rows_by_id(docs_results):
    results = {"rows": [{"id": "memory", "rlhf": {"figures": {"weights_P": 4.02,
                                                              "peak_rss_bytes": 3 * 2**30}}}]}
    assert docs_results.lookup(results, "rows.memory.rlhf.figures.weights_P:.1f") == "4.0"
    assert docs_results.lookup(results, "rows.memory.rlhf.figures.peak_rss_bytes:gib") == "3.0 GiB"
    assert docs_results.lookup(results, "rows.0.rlhf.figures.weights_P:.2f") == "4.02"


def test_a_malformed_marker_is_reported_not_skipped(docs_results):
    """A marker the patterns cannot read (a comma in its name, a missing closing tag) would
    never be checked: the count of markers against the well-formed ones catches it."""
    good = "gold <!-- r full sft -->0.429<!-- /r --> here"
    assert docs_results.disagreements(good, "x.md") == []
    for bad in ("gold <!-- r full jobs:,.0f -->999<!-- /r --> here",
                "gold <!-- r full sft -->0.429 here",
                "<!-- results full table-short --> \n| a |\n<!-- /results -->\n"):
        problems = docs_results.disagreements(bad, "x.md")
        assert problems and "well formed" in problems[0], bad


def test_kept_comparisons_are_derived_by_the_current_criteria(docs_results):
    """Each kept results.json holds the rows the current code derives from its runs, and its
    report.md is what it renders: a change to the statistics shows up in the docs."""
    for source in ("full", "demo", "pareto", "real-cpu"):
        assert docs_results.stale(source) == [], source
