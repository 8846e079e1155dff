"""Several objectives in ``preflab compare``: the sweep's jobs (``--pareto-weights``), each
road's front of gold against harmlessness, and the report section drawn from results.json."""

from __future__ import annotations

import json
import shutil

import pytest

from preflab.cli import main
from preflab.compare import sections


def test_the_sweep_relabels_once_per_weight_and_trains_both_roads(tiny_world, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--world", str(tiny_world), "--output-dir", str(out), "--preset",
                 "quick", "--methods", "dpo,ppo", "--pareto-weights", "2,0", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    relabel = [x for x in lines if x.startswith("preflab world relabel ")]
    assert len(relabel) == 2
    assert {x.split("--harmlessness-weight ")[1].split()[0] for x in relabel} == {"0.0", "2.0"}
    for key in ("w0", "w2"):
        pairs = f"/data/pairs-{key}.jsonl"
        dpo = [x for x in lines if x.startswith("preflab dpo ") and f"runs/dpo-s0-p{key} " in x + " "]
        rm = [x for x in lines if x.startswith("preflab rm ") and f"runs/rm-s0-p{key} " in x + " "]
        ppo = [x for x in lines if x.startswith("preflab ppo ") and f"runs/ppo-s0-p{key} " in x + " "]
        assert len(dpo) == len(rm) == len(ppo) == 1
        assert pairs in dpo[0] and pairs in rm[0] and f"runs/rm-s0-p{key}" in ppo[0]
        assert lines.index(next(x for x in relabel if pairs in x)) < lines.index(dpo[0])


@pytest.mark.parametrize("flags, says", [
    (["--pareto-weights", "1,-2"], "finite weights of 0 or more"),
    (["--pareto-weights", "a"], "finite weights of 0 or more"),
])
def test_bad_weights_are_refused(flags, says, tiny_world, tmp_path, capsys):
    assert main(["compare", "--world", str(tiny_world), "--output-dir", str(tmp_path / "c"),
                 "--dry-run", *flags]) == 2
    assert says in capsys.readouterr().err


def test_the_sweep_needs_the_world(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert main(["compare", "--model", str(tiny_model_dir), "--pairs", str(data), "--prompts",
                 str(data), "--output-dir", str(tmp_path / "c"), "--pareto-weights", "1",
                 "--dry-run"]) == 2
    assert "--pareto-weights needs the world" in capsys.readouterr().err


def _run(label, weight, gold, harm):
    return {"label": label, "experiment": "pareto", "status": "done",
            "variant": {"pairs": f"w{weight:g}"}, "run_dir": f"runs/{label}-{weight:g}",
            "score": {"eval/gold_reward": gold, "eval/harmlessness": harm, "eval/kl": 1.0}}


def test_each_roads_front_holds_the_points_no_other_beats_on_both():
    results = {"inputs": {"pareto_weights": [0.0, 1.0, 3.0]},
               "sft": {"score": {"eval/gold_reward": 0.4, "eval/harmlessness": 0.5}},
               "runs": [_run("DPO", 0, 0.6, 0.4), _run("DPO", 1, 0.55, 0.6),
                        _run("DPO", 3, 0.5, 0.55),  # beaten on both by w=1
                        _run("RLHF (PPO)", 0, 0.7, 0.3),
                        {**_run("RLHF (PPO)", 1, 0.9, 0.9), "status": "failed"}]}
    out = sections.pareto(results)
    dpo = out["points"]["DPO"]
    assert [p["weight"] for p in dpo] == [0, 1, 3]
    assert [p["on_front"] for p in dpo] == [True, True, False]
    assert [p["weight"] for p in out["points"]["RLHF (PPO)"]] == [0]  # the failed run is left out
    assert out["sft"] == {"gold_reward": 0.4, "harmlessness": 0.5}


def test_the_report_shows_the_sweep(quick, tmp_path):
    out, _, _ = quick
    copy = tmp_path / "copy"
    copy.mkdir()
    results = json.loads((out / "results.json").read_text())
    assert "Several objectives" not in (out / "report.md").read_text()  # no sweep, no section
    results["inputs"]["pareto_weights"] = [0.0, 1.0]
    dpo = next(r for r in results["runs"] if r["method"] == "dpo" and r["experiment"] == "main")
    for weight, gold, harm in ((0, 0.6, 0.4), (1, 0.55, 0.6)):  # as the sweep's runs would be
        results["runs"].append({**dpo, **_run("DPO", weight, gold, harm)})
    results["pareto"] = sections.pareto(results)
    (copy / "results.json").write_text(json.dumps(results))
    assert main(["report", str(copy)]) == 0
    md = (copy / "report.md").read_text()
    assert "## Several objectives" in md and "figures/pareto.png" in md
    assert "| DPO | 1 | 0.550 | 0.600 |" in md
    assert (copy / "figures" / "pareto.png").stat().st_size > 5_000
    shutil.rmtree(copy)
