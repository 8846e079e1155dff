"""The rows of the measured table, from hand-made results whose answers are worked out here."""

from __future__ import annotations

import statistics

import pytest

from preflab.compare import criteria


def run(method, road, experiment="main", quality=None, evals=(), train=(), stages=None,
        pairs="all", status="done", kl=None, **variant):
    entry = {"method": method, "road": road, "experiment": experiment, "label": method.upper(),
             "memory_label": method, "status": status, "run_dir": f"runs/{method}",
             "stages": stages or [method], "policy": (stages or [method])[-1],
             "variant": {"pairs": pairs, "lr_scale": 1.0, "strength_scale": 1.0, "seed": 0,
                         **variant}, "quality_metric": "gold_reward",
             "curves": {"eval": [{"step": s, "quality": q, "kl": kl, "proxy": p, "margin": m,
                                  "elapsed_s": t} for s, q, kl, p, m, t in evals],
                        "train": [{"step": i, "loss": loss, "margin": None, "scores": None,
                                   "kl": None, "elapsed_s": None}
                                  for i, loss in enumerate(train)],
                        "nonfinite": False}}
    if quality is not None:
        entry["score"] = {"eval/gold_reward": quality, "eval/harmlessness": 0.5, "eval/kl": kl}
    return entry


def results(runs, sft=0.4, jobs=None, kl_bound=10.0, **inputs):
    return {"runs": runs, "quality": {"metric": "gold_reward"}, "sft": {"score": {
        "eval/gold_reward": sft}}, "settings": {"kl_blowup": 10.0, "kl_bound": kl_bound},
        "jobs": jobs or {},
        "stages": {}, "inputs": {"harmlessness_weight": 1.0, **inputs}}


def test_stability_names_the_steadier_road_only_when_the_f_test_separates_them():
    """PPO seeds 0.50, 0.60, 0.70 (variance 0.01); DPO 0.55, 0.56, 0.57 (variance 0.0001).
    F = 100 on (2, 2) degrees of freedom, where P(F > f) = 1 / (1 + f): p = 2 / 101 = 0.0198
    < 0.05, so DPO is the steadier road. With PPO at 0.6 -+ sqrt(0.0015) (variance 0.0015,
    F = 15), p = 2 / 16 = 0.125: no significant difference, and the note says how large a
    ratio of spreads 3 seeds can tell apart (sqrt(39) = 6.2x)."""
    dpo = [run("dpo", "direct", e, q) for e, q in (("main", 0.55), ("seed", 0.56),
                                                   ("seed", 0.57))]
    ppo = [run("ppo", "rlhf", e, q) for e, q in (("main", 0.5), ("seed", 0.6), ("seed", 0.7))]
    row = criteria.stability(results(ppo + dpo))
    assert row["rlhf"]["figures"]["std"] == pytest.approx(0.1)
    assert row["dpo"]["figures"]["std"] == pytest.approx(0.01)
    assert row["rlhf"]["figures"]["worst"] == 0.5
    assert row["test"]["p"] == pytest.approx(2 / 101, rel=1e-6)
    assert row["winner"] == "DPO" and row["agrees"] is True
    assert row["basis"] == "3 seeds per road"
    ci = row["rlhf"]["figures"]["ci"]  # 0.6 -+ t(0.975, 2) x 0.1 / sqrt(3) = -+ 0.2484
    assert (ci["low"], ci["high"]) == pytest.approx((0.6 - 0.24841, 0.6 + 0.24841), abs=1e-4)
    d = 0.0015 ** 0.5
    ppo = [run("ppo", "rlhf", e, q) for e, q in (("main", 0.6 - d), ("seed", 0.6),
                                                 ("seed", 0.6 + d))]
    row = criteria.stability(results(ppo + dpo))
    assert row["test"]["p"] == pytest.approx(0.125, rel=1e-6)
    assert row["winner"] == "no significant difference" and row["agrees"] is None
    assert "6.2x" in row["note"]


def test_a_run_that_failed_on_a_non_finite_value_counts_once():
    """Three PPO seeds, one failed on NaN (status and non-finite both set): 1 of 3 bad, not 2
    of 3 (which once made Fisher's test read 4 of 3 and raise)."""
    ppo = [run("ppo", "rlhf", e, q) for e, q in (("main", 0.5), ("seed", 0.6), ("seed", 0.7))]
    ppo.append(run("ppo", "rlhf", "seed", None, status="failed"))
    ppo[-1]["curves"]["nonfinite"] = True
    dpo = [run("dpo", "direct", e, q) for e, q in (("main", 0.55), ("seed", 0.56),
                                                   ("seed", 0.57))]
    row = criteria.stability(results(ppo + dpo))
    assert "1 of 4 against 0 of 3" in row["note"]


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


def test_efficiency_pairs_the_roads_gains_at_each_data_size():
    """SFT 0.4. RLHF gains +0.05 (1/16) and +0.20 (all), DPO +0.10 and +0.12: the paired
    differences -0.05 and +0.08 straddle 0: no significant difference. With RLHF ahead by
    0.10, 0.11 and 0.12 at three sizes: t = 0.11 / (0.01 / sqrt 3) = 19.05 on 2 df, p =
    0.00274: RLHF is the more sample-efficient road, against the article."""
    counts = {"1/16": 100, "1/4": 400, "all": 1600}
    runs = [run("ppo", "rlhf", "efficiency", 0.45, pairs="1/16"), run("ppo", "rlhf", "main", 0.6),
            run("dpo", "direct", "efficiency", 0.5, pairs="1/16"),
            run("dpo", "direct", "main", 0.52)]
    row = criteria.efficiency(results(runs, pair_counts=counts))
    assert row["rlhf"]["figures"]["mean_gain"] == pytest.approx(0.125)
    assert row["dpo"]["figures"]["mean_gain"] == pytest.approx(0.11)
    assert row["winner"] == "no significant difference" and row["agrees"] is None
    assert "+0.050 at 100 pairs" in row["rlhf"]["text"]
    runs = [run("ppo", "rlhf", "efficiency", 0.6, pairs="1/16"),
            run("ppo", "rlhf", "efficiency", 0.61, pairs="1/4"), run("ppo", "rlhf", "main", 0.62),
            run("dpo", "direct", "efficiency", 0.5, pairs="1/16"),
            run("dpo", "direct", "efficiency", 0.5, pairs="1/4"),
            run("dpo", "direct", "main", 0.5)]
    row = criteria.efficiency(results(runs, pair_counts=counts))
    assert row["test"]["p"] == pytest.approx(0.002745, rel=1e-3)
    assert row["winner"] == "RLHF" and row["agrees"] is False
    assert row["basis"] == "1 run per data size, 3 sizes"


def test_flexibility_with_one_run_per_road_names_no_winner():
    """New objective = gold + 1 x harmlessness (0.5 here): RLHF 0.6 + 0.5, DPO 0.55 + 0.5. One
    run per road measures nothing about seeds, so the row reports both and names no winner;
    the per-prompt scores give the evaluation's interval: differences 0.1, 0.0, 0.05 (gold)."""
    jobs = {k: {"wall_s": w} for k, w in (("rm-new", 10), ("ppo-new", 20), ("dpo-new", 50),
                                          ("ppo", 1), ("rm", 1), ("dpo", 1))}
    runs = [run("ppo", "rlhf", "main", 0.5, stages=["rm", "ppo"]),
            run("ppo", "rlhf", "flexibility", 0.6, stages=["rm-new", "ppo-new"]),
            run("dpo", "direct", "main", 0.5, stages=["dpo"]),
            run("dpo", "direct", "flexibility", 0.55, stages=["dpo-new"])]
    runs[1]["per_prompt"] = {"gold_reward": [0.7, 0.5, 0.6], "harmlessness": [0.5, 0.5, 0.5]}
    runs[3]["per_prompt"] = {"gold_reward": [0.6, 0.5, 0.55], "harmlessness": [0.5, 0.5, 0.5]}
    row = criteria.flexibility(results(runs, jobs=jobs, pair_counts={"new": 300}))
    assert row["rlhf"]["figures"]["new_objective"] == pytest.approx(1.1)
    assert row["rlhf"]["figures"]["wall_s"] == 30 and row["dpo"]["figures"]["wall_s"] == 50
    assert row["winner"] == "not tested" and row["agrees"] is None
    assert row["test"]["difference"]["mean"] == pytest.approx(0.05)
    assert row["basis"] == "1 run per road"


def test_training_time_tests_cpu_seconds_over_seeds():
    """CPU seconds per seed, RLHF (rm + ppo): 46 + 58, 47 + 57, 45 + 57 = 104, 104, 102; DPO 53,
    53, 54. Welch t = 50 / sqrt(1.333/3 + 0.333/3) = 67.1: DPO is faster. The wall times, which
    other runs on the machine stretched (55 to 132 s for the same DPO work), are shown but not
    tested; with them alone the difference would be lost in the noise."""
    cpu = {"rm-s0": (46, 49), "ppo-s0": (58, 88), "rm-s1": (47, 129), "ppo-s1": (57, 100),
           "rm-s2": (45, 81), "ppo-s2": (57, 62), "dpo-s0": (53, 55), "dpo-s1": (53, 65),
           "dpo-s2": (54, 132)}
    jobs = {k: {"cpu_s": c, "wall_s": w} for k, (c, w) in cpu.items()}
    stages = {k: {"command": k.split("-")[0]} for k in cpu}
    runs = [run("ppo", "rlhf", "main" if s == 0 else "seed", 0.6, stages=[f"rm-s{s}", f"ppo-s{s}"])
            for s in range(3)]
    runs += [run("dpo", "direct", "main" if s == 0 else "seed", 0.55, stages=[f"dpo-s{s}"])
             for s in range(3)]
    data = results(runs, jobs=jobs)
    data["stages"] = stages
    row = criteria.training_time(data)
    assert row["rlhf"]["figures"]["seed_cpu_s"] == [104, 104, 102]
    assert row["test"]["statistic"] == pytest.approx(50 / (0.5 + 1 / 18) ** 0.5, rel=1e-6)
    assert row["winner"] == "DPO" and row["agrees"] is True
    assert row["rlhf"]["short"] == "103 CPU s (3 seeds)"
    assert row["dpo"]["figures"]["seed_wall_s"] == [55, 65, 132]


def _hack_evals(peak, final):
    return [(0, 0.4, 0.0, 1.0, 0.0, 0), (10, peak, 2.0, 2.0, 0.2, 5),
            (20, final, 9.0, 3.0, 0.4, 9)]


def test_hacking_tests_where_each_pushed_road_ends_and_searches_every_run():
    """Pushed the same way, PPO ends at held-out gold 0.10, 0.15, 0.20 (SFT 0.4: -0.30, -0.25,
    -0.20) and DPO at 0.50, 0.51, 0.52 (+0.10, +0.11, +0.12): Welch t = -0.36 /
    sqrt(0.0025/3 + 0.0001/3) = -12.23, DPO hacks less. The drops from the training curve's
    peak (0.40 to 0.50 and 0 to 0.02) are shown, not tested. A DPO grid run that collapsed
    (0.6 -> 0.01) is its worst of all runs and is shown. One run per road names no winner."""
    ppo = [run("ppo", "rlhf", "hacking", q, evals=_hack_evals(0.6, 0.6 - d), seed=s)
           for s, (q, d) in enumerate(((0.10, 0.4), (0.15, 0.45), (0.20, 0.5)))]
    dpo = [run("dpo", "direct", "hacking", q, evals=_hack_evals(0.55, 0.55 - d), seed=s)
           for s, (q, d) in enumerate(((0.50, 0.0), (0.51, 0.01), (0.52, 0.02)))]
    dpo.append(run("dpo", "direct", "sensitivity", 0.01, evals=_hack_evals(0.6, 0.01)))
    main = [run("ppo", "rlhf", "main", 0.6), run("dpo", "direct", "main", 0.55)]
    row = criteria.hacking(results(main + ppo + dpo))
    assert row["rlhf"]["figures"]["change"]["mean"] == pytest.approx(-0.25)
    assert row["dpo"]["figures"]["change"]["mean"] == pytest.approx(0.11)
    assert row["rlhf"]["figures"]["drop"]["mean"] == pytest.approx(0.45)
    assert row["dpo"]["figures"]["worst_of_all"]["drop"] == pytest.approx(0.59)
    assert row["dpo"]["figures"]["all_runs"] == 4
    assert row["test"]["statistic"] == pytest.approx(-0.36 / (0.0026 / 3) ** 0.5, rel=1e-6)
    assert row["winner"] == "DPO" and row["agrees"] is True
    one = criteria.hacking(results(main + ppo[:1] + dpo[:1]))
    assert one["winner"] == "not tested" and one["rlhf"]["figures"]["change"]["mean"] == (
        pytest.approx(-0.3))
    main[1] = run("dpo", "direct", "main", 0.55, evals=_hack_evals(0.55, 0.55))
    half = criteria.hacking(results(main + ppo))  # only PPO was pushed: no verdict
    assert half["winner"] in ("not tested", "no significant difference")
    assert "only one road" in half["note"]


def _setting(method, road, golds, kl, strength=1.0):
    return [run(method, road, "main" if s == 0 else "frontier", q, seed=s, lr_scale=1.0,
                strength_scale=strength, kl=kl) for s, q in enumerate(golds)]


def test_quality_row_picks_the_better_road_at_the_stated_kl_bound():
    """SFT 0.4. PPO: kl_coef x1 reaches gold 0.66, 0.68, 0.70 at KL 8; x3 0.51, 0.52, 0.53 at
    KL 2. DPO: beta x1 0.56, 0.57, 0.58 at KL 1; x1/3 0.58, 0.59, 0.60 at KL 4.
    Within KL 10 the best are PPO x1 (0.68) and DPO x1/3 (0.59): Welch t = 0.09 /
    sqrt(0.0004/3 + 0.0001/3) = 6.97 on 2.94 df, p = 0.0065, each picked from 2 settings: x 4
    (Bonferroni) = 0.026, still PPO. Within KL 3 only PPO x3 (0.52) and DPO x1 (0.57) qualify,
    nothing is picked: t = -0.05 / sqrt(0.0002/3) = -6.12 on 4 df, p = 0.0036: DPO.
    With DPO x1/3 at 0.62, 0.65, 0.68 (intervals overlapping PPO's): no significant
    difference."""
    ppo = _setting("ppo", "rlhf", (0.66, 0.68, 0.70), 8.0) + _setting(
        "ppo", "rlhf", (0.51, 0.52, 0.53), 2.0, strength=3.0)
    dpo = _setting("dpo", "direct", (0.56, 0.57, 0.58), 1.0) + _setting(
        "dpo", "direct", (0.58, 0.59, 0.60), 4.0, strength=1 / 3)
    row = criteria.quality(results(ppo + dpo, kl_bound=10.0))
    assert row["rlhf"]["figures"]["setting"] == "kl_coef x1"
    assert row["dpo"]["figures"]["setting"] == "beta x1/3"
    assert row["rlhf"]["figures"]["gain"]["mean"] == pytest.approx(0.28)
    assert row["test"]["p_unadjusted"] == pytest.approx(0.0065, abs=2e-4)
    assert row["test"]["p"] == pytest.approx(4 * row["test"]["p_unadjusted"])
    assert row["winner"] == "RLHF" and row["agrees"] is None and not row["in_article"]
    row = criteria.quality(results(ppo + dpo, kl_bound=3.0))
    assert row["rlhf"]["figures"]["setting"] == "kl_coef x3"
    assert row["dpo"]["figures"]["setting"] == "beta x1"
    assert row["test"]["p"] == pytest.approx(0.0036, abs=5e-4)
    assert row["winner"] == "DPO"
    wide = _setting("dpo", "direct", (0.62, 0.65, 0.68), 4.0, strength=1 / 3)
    row = criteria.quality(results(ppo + dpo[:3] + wide, kl_bound=10.0))
    assert row["winner"] == "no significant difference"
    row = criteria.quality(results(ppo + dpo, kl_bound=0.5))  # nothing is that close to SFT
    assert row["winner"] == "not measured" and "no setting within KL 0.5" in row["dpo"]["text"]
    tests = criteria.frontier_tests(results(ppo + dpo), (3.0, 10.0))
    assert [t["winner"] for t in tests] == ["DPO", "RLHF"]


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
    """By hand. dpo: beta, loss (2), and a loss's own hyperparameters only for the loss that
    declares them: label_smoothing for cdpo and robust, gamma for simpo, cpo_alpha for cpo
    (simpo, cpo: 3; the stage's hyperparameter section names its loss). rm: margin,
    center_rewards_coef (2). ppo: the rollout's kl_coef, clip_range, num_minibatches, rollout_batch_size,
    response_length, temperature, missing_eos_penalty, penalize_missing_eos, and its own
    ppo_epochs, gamma, gae_lambda, vf_coef, clip_range_value, whiten_rewards, kl_estimator,
    adaptive_kl, target_kl, kl_horizon (18): PPOConfig's, not only the RolloutConfig it builds
    on and imports. --fsdp and --padding-free change how a run executes, not what it computes,
    and --nonfinite what a step with a non-finite loss does: none is counted. With the
    optimiser's and the other shared training settings: dpo 16, rm 16, ppo 32."""
    assert criteria._knobs("dpo")[0] == 2
    assert criteria._knobs("dpo", "dpo") == criteria._knobs("dpo", "ipo") == (2, 16)
    assert criteria._knobs("dpo", "simpo") == criteria._knobs("dpo", "cpo") == (3, 17)
    assert criteria._knobs("rm")[0] == 2
    assert criteria._knobs("ppo")[0] == 18
    assert {"fsdp", "padding_free", "nonfinite"} <= criteria.NOT_HYPERPARAMETERS
    assert [criteria._knobs(c)[1] for c in ("dpo", "rm", "ppo")] == [16, 16, 32]
