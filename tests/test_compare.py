"""`preflab compare` end to end on a miniature world (the quick preset with tiny budgets), on
user data, and its harness: fresh processes, reuse, failures, time budgets, dry runs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from preflab.cli import main
from preflab.compare.harness import Harness, Job, order
from tests.chromium import find_chromium, render_page
from tests.conftest import tiny_config
from tests.sft_data import write_jsonl
from tests.test_rm import preference_records


def numbers(text: str) -> list[str]:
    return re.findall(r"(?<![\w./])[-+]?\d+(?:\.\d+)?(?![\w.%/])", text)  # not "90%", "1/16"


def numeric_leaves(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numeric_leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in numeric_leaves(v)]
    return []


def test_quick_preset_writes_the_report_and_every_table_number_is_in_results(quick):
    out, code, _ = quick
    assert code == 3  # the report was written, and one run did not finish
    results = json.loads((out / "results.json").read_text())
    for name in ("report.md", "report.html", "figures/memory.png", "figures/frontier.png",
                 "figures/hacking.png"):
        assert (out / name).is_file(), name
    assert [r["id"] for r in results["rows"]] == ["simplicity", "memory", "stability",
                                                  "efficiency", "flexibility", "time",
                                                  "hyperparameters", "hacking", "quality"]
    # Every number in the measured columns of report.md's table is a number in results.json
    # (at the precision shown), not one the report computed on its own.
    leaves = numeric_leaves({k: v for k, v in results.items() if k != "rows"}) + numeric_leaves(
        [r[side]["figures"] for r in results["rows"] for side in ("rlhf", "dpo")])
    table = [line for line in (out / "report.md").read_text().splitlines()
             if line.startswith("| ") and not line.startswith("| Criterion")]
    checked = 0
    for line in table[:9]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for cell in cells[1:3]:  # RLHF (measured), DPO (measured)
            for token in numbers(cell):
                digits = len(token.split(".")[1]) if "." in token else 0
                value = float(token)
                assert any(abs(round(x, digits) - value) < 1e-9 or
                           abs(round(x / 2**20, digits) - value) < 1e-9 for x in leaves), \
                    f"{token!r} in {cell!r} is not in results.json"
                checked += 1
    assert checked > 20
    # Both roads are in the table with measured memory and a measured winner.
    memory = results["rows"][1]
    assert memory["winner"] == "DPO" and memory["rlhf"]["figures"]["weights_P"] > 3
    assert memory["dpo"]["figures"]["weights_P"] == pytest.approx(2.0, abs=0.01)


def test_a_failed_run_is_shown_not_dropped(quick):
    out, _, _ = quick
    results = json.loads((out / "results.json").read_text())
    failed = {f["key"]: f for f in results["failed"]}
    assert failed["ipo-s0"]["status"] == "failed" and "beta" in failed["ipo-s0"]["error"]
    assert failed["score-ipo-s0"]["status"] == "skipped"
    ipo = next(r for r in results["runs"] if r["method"] == "ipo")
    assert ipo["status"] == "failed"
    report = (out / "report.md").read_text()
    assert "## Runs that did not finish" in report and "| ipo-s0 | failed |" in report
    assert "| IPO | failed |" in report
    # the rest finished
    assert all(r["status"] == "done" for r in results["runs"] if r["method"] != "ipo")


def test_second_run_reuses_finished_runs_and_keeps_their_timings(quick, tiny_world, capsys):
    out, _, config = quick
    before = json.loads((out / "results.json").read_text())["jobs"]
    code = main(["compare", "--world", str(tiny_world), "--output-dir", str(out), "--preset",
                 "quick", "--config", str(config)])
    assert code == 3
    after = json.loads((out / "results.json").read_text())["jobs"]
    for key, job in before.items():
        if job["status"] == "done":
            assert after[key]["wall_s"] == job["wall_s"], key
    assert "reused" in capsys.readouterr().err


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(quick, tmp_path):
    out, _, _ = quick
    page = render_page(out / "report.html", tmp_path / "report.png")
    assert page.errors == []
    assert page.images and not page.broken_images
    assert all(img.natural_width > 0 for img in page.images)
    assert page.external_requests == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_command_renders_again_from_results_json(quick, tmp_path):
    import shutil

    out, _, _ = quick
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "results.json", copy / "results.json")  # nothing else: no runs
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert (copy / "figures" / "memory.png").is_file()


def test_dry_run_prints_every_command_in_order_with_the_launcher(tiny_world, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--world", str(tiny_world), "--output-dir", str(out), "--preset",
                 "standard", "--dry-run", "--launcher", "torchrun --nproc-per-node 8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert not out.exists()  # nothing ran, nothing written
    training = [x for x in lines if " -m preflab.cli " in x]
    assert training and all(x.startswith("torchrun --nproc-per-node 8 -m preflab.cli ")
                            for x in training)
    assert not any(x.startswith("torchrun") for x in lines if "preflab.compare.score" in x)
    position = {name: next(i for i, x in enumerate(lines) if f"runs/{name} " in x + " ")
                for name in ("sft", "rm-s0", "ppo-s0", "dpo-s0")}
    assert position["sft"] < position["dpo-s0"] and position["rm-s0"] < position["ppo-s0"]
    assert sum("preflab.cli ppo" in x for x in lines) >= 3  # seeds, hacking, flexibility
    assert any("world relabel" in x for x in lines)


def test_full_preset_sweeps_the_frontier_and_pushes_both_roads_equally(tmp_path):
    """full: beta and kl_coef x {1/3, 1, 3} at the base learning rate with 3 seeds each (seed 0
    of x1/3 and x3 is the sensitivity grid's run), and each road's hacking run on the same 1/4
    of the pairs with its regulariser 50x smaller and twice the steps, 3 seeds; standard: one
    hacking seed per road and no sweep."""
    from preflab.compare.design import build
    from preflab.compare.settings import CompareConfig

    design = build(CompareConfig(output_dir=str(tmp_path / "c"), world=str(tmp_path / "w"),
                                 preset="full"))
    by = {(r.method, r.experiment): [] for r in design.runs}
    for r in design.runs:
        by[(r.method, r.experiment)].append(r)
    for method, flag, base in (("dpo", "--beta", 0.5), ("ppo", "--kl-coef", 0.05)):
        sweep = [r for r in design.runs if r.method == method
                 and r.experiment in ("main", "seed", "sensitivity", "frontier")
                 and r.variant["lr_scale"] == 1]
        settings = {}
        for r in sweep:
            settings.setdefault(r.variant["strength_scale"], set()).add(r.variant["seed"])
        assert settings == {0.3333: {0, 1, 2}, 1.0: {0, 1, 2}, 3.0: {0, 1, 2}}
        hack = by[(method, "hacking")]
        assert sorted(r.variant["seed"] for r in hack) == [0, 1, 2]
        words = design.jobs[hack[0].policy].words
        assert float(words[words.index(flag) + 1]) == pytest.approx(base * 0.02)
        assert words[words.index("--data") + 1].endswith("pairs-1of4.jsonl") or method == "ppo"
    ppo_hack = design.jobs[by[("ppo", "hacking")][0].policy].words
    rm = ppo_hack[ppo_hack.index("--reward") + 1]
    assert "p1of4" in rm  # PPO's reward model trained on the same 1/4 of the pairs
    standard = build(CompareConfig(output_dir=str(tmp_path / "s"), world=str(tmp_path / "w"),
                                   preset="standard"))
    assert sorted(r.method for r in standard.runs if r.experiment == "hacking") == ["dpo", "ppo"]
    assert not [r for r in standard.runs if r.experiment == "frontier"]


def test_user_data_mode_with_a_judge_reward_model(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_records(96))
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"the {n} was {a}"} for n in ("movie", "film", "plot")
                           for a in ("great", "bad", "fun", "boring", "fine", "awful")])
    config = tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "cmp"
    code = main(["compare", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--prompts",
                 str(prompts), "--output-dir", str(out), "--preset", "quick", "--methods",
                 "dpo,ppo", "--config", str(config), "--max-length", "32"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["quality"] == {"metric": "judge_reward", "proxy": True,
                                  "label": "judge reward model score (a proxy)"}
    scored = [run for run in results["runs"] if run["experiment"] != "probe"]
    assert {run["method"] for run in scored} == {"dpo", "ppo"}
    for run in scored:
        assert {"eval/judge_reward", "eval/preference_accuracy", "eval/kl"} <= run["score"].keys()
    # the judge's pairs were held out from every compared run
    judge = {json.dumps(r) for r in map(json.loads, (out / "data/pairs-judge.jsonl").open())}
    train = {json.dumps(r) for r in map(json.loads, (out / "data/pairs.jsonl").open())}
    assert judge and train and not judge & train
    assert "a proxy, not a ground truth" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, expected", [
    ([], "say what to compare on"),
    (["--world", "w", "--model", "m"], "not both"),
    (["--world", "w", "--methods", "dpo,magic"], "unknown method 'magic'"),
    (["--world", "w", "--jobs", "-1"], "--jobs must be 0 or more"),
])
def test_bad_input_is_one_paragraph_and_exit_2(args, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--output-dir", "cmp", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_refuses_a_directory_of_other_files_and_a_bad_yaml_key(tiny_world, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["compare", "--world", str(tiny_world), "--output-dir",
                 str(tmp_path / "mine")]) == 2
    assert "not a comparison" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    inside = tmp_path / "cmp2" / "world"  # a world built inside the output directory is fine
    inside.parent.mkdir()
    import shutil

    shutil.copytree(tiny_world, inside)
    assert main(["compare", "--world", str(inside), "--output-dir", str(inside.parent),
                 "--dry-run"]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: quick\nhyperparameters:\n  dpo: {beta: 0.1}\n  magic: {x: 1}\n")
    assert main(["compare", "--world", str(tiny_world), "--output-dir", str(tmp_path / "c"),
                 "--config", str(bad)]) == 2
    assert "unknown section 'magic'" in capsys.readouterr().err


# --- the harness ---------------------------------------------------------------------------------

def code_job(key: str, code: str, done: Path, after=()) -> Job:
    return Job(key, ["-c", code], done, list(after), kind="test")


def test_harness_failure_skips_dependents_and_budget_stops_a_run(tmp_path):
    ok = tmp_path / "ok.txt"
    jobs = {
        "ok": code_job("ok", f"open({str(ok)!r}, 'w').write('x')", ok),
        "bad": code_job("bad", "import sys; print('broken on purpose'); sys.exit(4)",
                        tmp_path / "never"),
        "after-bad": code_job("after-bad", "pass", tmp_path / "never2", after=["bad"]),
        "slow": code_job("slow", "import time; time.sleep(60)", tmp_path / "never3"),
        "after-ok": code_job("after-ok", f"open({str(tmp_path / 'b.txt')!r}, 'w')",
                             tmp_path / "b.txt", after=["ok"]),
    }
    records = Harness(tmp_path / "h", jobs, parallel=2, time_budget_s=3, progress=False).run()
    assert records["ok"].status == "done" and records["after-ok"].status == "done"
    assert records["bad"].status == "failed" and records["bad"].exit_code == 4
    assert "broken on purpose" in records["bad"].error
    assert records["after-bad"].status == "skipped" and "bad" in records["after-bad"].error
    assert records["slow"].status == "timeout" and records["slow"].wall_s < 30
    saved = json.loads((tmp_path / "h" / "jobs.json").read_text())
    assert saved["slow"]["status"] == "timeout"
    # a second harness reuses what finished and keeps its figures
    again = Harness(tmp_path / "h", jobs, parallel=2, time_budget_s=3, progress=False).run()
    assert again["ok"].reused and again["ok"].wall_s == records["ok"].wall_s


def test_order_puts_dependencies_first_and_finds_cycles(tmp_path):
    jobs = {k: code_job(k, "pass", tmp_path / k, after=a)
            for k, a in (("c", ["b"]), ("b", ["a"]), ("a", []))}
    assert order(jobs) == ["a", "b", "c"]
    jobs["a"].after = ["c"]
    with pytest.raises(ValueError, match="cycle"):
        order(jobs)


def test_compare_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for flag in ("--world", "--model", "--pairs", "--prompts", "--preset", "--methods",
                 "--seeds", "--config", "--fresh", "--dry-run", "--launcher", "--time-budget",
                 "--gpu-memory", "--have", "--objective-may-change", "--jobs"):
        assert flag in text
    assert sys.executable  # the harness runs children with this interpreter
