"""`preflab demo` wiring, on a miniature world: every stage runs and the report is written."""

from __future__ import annotations

import json

from preflab import demo


def test_demo_runs_every_stage_and_reuses(tmp_path, monkeypatch, capsys):
    # Shrink the budget: the real demo's figures are measured by `make demo`, not here.
    monkeypatch.setattr("preflab.world.build.SFT_SETTINGS",
                        {"max_steps": 4, "batch_size": 8, "learning_rate": 3e-3})
    monkeypatch.setattr(demo, "DEMO_DPO", {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3,
                                           "beta": 0.5, "eval_every": 0})
    real_build = __import__("preflab.world", fromlist=["build_world"]).build_world

    def small_world(out, **kw):
        return real_build(out, num_reviews=200, num_prompts_train=40, num_prompts_eval=16,
                          hidden_size=16, num_layers=1, **kw)

    monkeypatch.setattr("preflab.world.build_world", small_world)
    out = tmp_path / "demo"
    args = ["--output-dir", str(out), "--pair-prompts", "8", "--eval-prompts", "4", "--no-progress"]
    assert demo.main(args) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert {"sft", "dpo"} <= scores.keys() and 0 <= scores["dpo"]["gold_reward"] <= 1
    report = (out / "report.md").read_text()
    assert "gold reward" in report and "| dpo |" in report
    capsys.readouterr()
    assert demo.main(args) == 0  # a second run reuses every stage
    assert capsys.readouterr().out.count("reused from an earlier run") == 5
