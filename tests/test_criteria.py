"""The rows of the measured table, from hand-made results whose answers are worked out here."""

from __future__ import annotations

import statistics

import pytest

from preflab.compare import criteria


def run(method, road, experiment="main", quality=None, evals=(), train=(), stages=None,
        pairs="all", status="done", **variant):
    entry = {"method": method, "road": road, "experiment": experiment, "label": method.upper(),
             "memory_label": method, "status": status, "run_dir": f"runs/{method}",
             "stages": stages or [method], "policy": (stages or [method])[-1],
             "variant": {"pairs": pairs, **variant}, "quality_metric": "gold_reward",
             "curves": {"eval": [{"step": s, "quality": q, "kl": kl, "proxy": p, "margin": m,
                                  "elapsed_s": t} for s, q, kl, p, m, t in evals],
                        "train": [{"step": i, "loss": loss, "margin": None, "scores": None,
                                   "kl": None, "elapsed_s": None}
                                  for i, loss in enumerate(train)],
                        "nonfinite": False}}
    if quality is not None:
        entry["score"] = {"eval/gold_reward": quality, "eval/harmlessness": 0.5}
    return entry


def results(runs, sft=0.4, jobs=None, **inputs):
    return {"runs": runs, "quality": {"metric": "gold_reward"}, "sft": {"score": {
        "eval/gold_reward": sft}}, "settings": {"kl_blowup": 10.0}, "jobs": jobs or {},
        "stages": {}, "inputs": {"harmlessness_weight": 1.0, **inputs}}


def test_stability_compares_the_spread_over_seeds():
    """PPO seeds 0.50, 0.60, 0.70 (sd 0.1); DPO 0.55, 0.56, 0.57 (sd 0.01): DPO is steadier."""
    runs = [run("ppo", "rlhf", e, q) for e, q in (("main", 0.5), ("seed", 0.6), ("seed", 0.7))]
    runs += [run("dpo", "direct", e, q) for e, q in (("main", 0.55), ("seed", 0.56),
                                                     ("seed", 0.57))]
    row = criteria.stability(results(runs))
    assert row["rlhf"]["figures"]["std"] == pytest.approx(0.1)
    assert row["dpo"]["figures"]["std"] == pytest.approx(0.01)
    assert row["rlhf"]["figures"]["worst"] == 0.5
    assert row["winner"] == "DPO" and row["agrees"] is True


def test_stability_needs_two_seeds_and_counts_spikes_and_blowups():
    losses = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0, 5.0, 1.0]
    evals = [(0, 0.4, 0.0, None, None, 0), (10, 0.5, 12.0, None, None, 5)]  # KL 12 > 10
    runs = [run("ppo", "rlhf", "main", 0.5, evals=evals, train=losses),
            run("ppo", "rlhf", "seed", 0.6), run("dpo", "direct", "main", 0.55)]
    row = criteria.stability(results(runs))
    assert row["rlhf"]["figures"]["loss_spikes"] == 1  # the 5.0 after ten steady losses
    assert row["rlhf"]["figures"]["kl_blowups"] == 1
    assert "needs 2 or more seeds" in row["dpo"]["text"]
    assert row["winner"] == "not measured" and row["agrees"] is None


def test_efficiency_winner_has_the_larger_mean_gain():
    """SFT 0.4. RLHF gains +0.05 (1/16) and +0.20 (all): mean 0.125. DPO +0.10 and +0.12:
    mean 0.11. RLHF is more efficient here, against the article's claim."""
    runs = [run("ppo", "rlhf", "efficiency", 0.45, pairs="1/16"), run("ppo", "rlhf", "main", 0.6),
            run("dpo", "direct", "efficiency", 0.5, pairs="1/16"),
            run("dpo", "direct", "main", 0.52)]
    row = criteria.efficiency(results(runs, pair_counts={"1/16": 100, "all": 1600}))
    assert row["rlhf"]["figures"]["mean_gain"] == pytest.approx(0.125)
    assert row["dpo"]["figures"]["mean_gain"] == pytest.approx(0.11)
    assert row["winner"] == "RLHF" and row["agrees"] is False
    assert "+0.050 at 100 pairs" in row["rlhf"]["text"]


def test_flexibility_scores_the_new_objective_then_the_time():
    """New objective = gold + 1 x harmlessness (0.5 here): RLHF 0.6 + 0.5, DPO 0.55 + 0.5."""
    jobs = {k: {"wall_s": w} for k, w in (("rm-new", 10), ("ppo-new", 20), ("dpo-new", 50),
                                          ("ppo", 1), ("rm", 1), ("dpo", 1))}
    runs = [run("ppo", "rlhf", "main", 0.5, stages=["rm", "ppo"]),
            run("ppo", "rlhf", "flexibility", 0.6, stages=["rm-new", "ppo-new"]),
            run("dpo", "direct", "main", 0.5, stages=["dpo"]),
            run("dpo", "direct", "flexibility", 0.55, stages=["dpo-new"])]
    row = criteria.flexibility(results(runs, jobs=jobs, pair_counts={"new": 300}))
    assert row["rlhf"]["figures"]["new_objective"] == pytest.approx(1.1)
    assert row["rlhf"]["figures"]["wall_s"] == 30 and row["dpo"]["figures"]["wall_s"] == 50
    assert row["winner"] == "RLHF" and row["agrees"] is True
    runs[1]["score"]["eval/gold_reward"] = 0.555  # within 0.01: the faster road wins
    row = criteria.flexibility(results(runs, jobs=jobs, pair_counts={"new": 300}))
    assert row["winner"] == "RLHF"


def test_hacking_measures_the_drop_from_the_peak():
    """PPO: gold 0.4 -> 0.6 (KL 2) -> 0.1 while its proxy rises 1 -> 3: drop 0.5. DPO: gold
    0.4 -> 0.55, no drop. DPO wins, as the article says."""
    ppo = [(0, 0.4, 0.0, 1.0, None, 0), (10, 0.6, 2.0, 2.0, None, 5), (20, 0.1, 9.0, 3.0, None, 9)]
    dpo = [(0, 0.4, 0.0, None, 0.0, 0), (50, 0.55, 1.0, None, 0.4, 5)]
    row = criteria.hacking(results([run("ppo", "rlhf", "hacking", 0.1, evals=ppo),
                                    run("dpo", "direct", "main", 0.55, evals=dpo)]))
    worst = row["rlhf"]["figures"]["worst"]
    assert (worst["peak"], worst["kl_at_peak"], worst["final"]) == (0.6, 2.0, 0.1)
    assert worst["drop"] == pytest.approx(0.5) and worst["proxy_last"] == 3.0
    assert row["dpo"]["figures"]["max_drop"] == 0
    assert row["winner"] == "DPO"


def test_to_90_uses_the_runs_own_curve():
    """Curve 0.4 -> 0.5 -> 0.58 -> 0.6: 90% of the gain (0.2) is 0.58, first reached at 30 s;
    plus 100 s of the road's earlier stages."""
    evals = [(0, 0.4, 0, None, None, 0), (1, 0.5, 0, None, None, 10),
             (2, 0.58, 0, None, None, 30), (3, 0.6, 0, None, None, 40)]
    assert criteria._to_90(run("ppo", "rlhf", evals=evals), 100.0) == 130.0
    flat = [(0, 0.4, 0, None, None, 0), (1, 0.39, 0, None, None, 10)]
    assert criteria._to_90(run("ppo", "rlhf", evals=flat), 0.0) is None


def test_spikes_by_hand():
    steady = [1.0 + 0.01 * (-1) ** i for i in range(10)]
    sd = statistics.pstdev(steady)
    assert criteria._spikes(steady + [1.0 + 5 * sd]) == 1
    assert criteria._spikes(steady + [1.0 + 3 * sd]) == 0
    assert criteria._spikes([1.0] * 5) == 0


def test_hyperparameters_count_each_commands_own_flags():
    """By hand. dpo: beta, loss, label_smoothing, gamma (4). rm: margin, center_rewards_coef
    (2). ppo: the rollout's kl_coef, clip_range, num_minibatches, rollout_batch_size,
    response_length, temperature, missing_eos_penalty, penalize_missing_eos, and its own
    ppo_epochs, gamma, gae_lambda, vf_coef, clip_range_value, whiten_rewards, kl_estimator,
    adaptive_kl, target_kl, kl_horizon (18): PPOConfig's, not only the RolloutConfig it builds
    on and imports. --fsdp and --padding-free change how a run executes, not what it computes,
    and are not counted."""
    assert criteria._knobs("dpo")[0] == 4
    assert criteria._knobs("rm")[0] == 2
    assert criteria._knobs("ppo")[0] == 18
    assert {"fsdp", "padding_free"} <= criteria.NOT_HYPERPARAMETERS
