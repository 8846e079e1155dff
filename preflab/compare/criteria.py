"""The article's table, measured: one row per row of it, each with the figures, the winner by
measurement, the article's claim beside it, and whether the two agree.

Each road is represented by one method in the table: the RLHF road by ``ppo`` (classic, four
models; ``ppo-shared`` where classic did not run), the direct road by ``dpo`` (the first
direct method that ran otherwise). The other methods appear in the sections below the table
(memory, frontier, diversity). ``rows`` returns the rows; ``text`` of each side is built only
from the numbers stored beside it, so every figure in the report can be traced to
``results.json`` and from there to the run directory it came from.
"""

from __future__ import annotations

import statistics

from preflab.compare import stats
from preflab.compare.methods import DIRECT, RLHF
from preflab.config import NOT_HYPERPARAMETERS  # noqa: F401 (read by tests as criteria.NOT_HYPERPARAMETERS)

ARTICLE = {
    "simplicity": ("Simplicity", "Complex (3 stages)", "Simple (2 stages)", "DPO"),
    "memory": ("Memory usage", "~4x base model", "~2x base model", "DPO"),
    "stability": ("Training stability", "Can be unstable", "Very stable", "DPO"),
    "efficiency": ("Sample efficiency", "Lower per pair", "Higher per pair", "DPO"),
    "flexibility": ("Flexibility", "High", "Moderate", "RLHF"),
    "time": ("Training time", "Longer", "Shorter", "DPO"),
    "hyperparameters": ("Hyperparameters", "Many (~10+)", "Few (~2-3)", "DPO"),
    "hacking": ("Risk of reward hacking", "Common", "Rare", "DPO"),
    # not in the article: which road made the better policy, what both roads are for
    "quality": ("Alignment quality (not in the article)", "-", "-", None),
}
NO_DIFFERENCE = "no significant difference"
UNTESTED = "not tested"
COUNTED = "counted"


def f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def _trains(results: dict, run: dict) -> bool:
    """Whether the run's last stage trains a model (best-of-n only samples)."""
    return bool(results.get("stages", {}).get(run["policy"], {}).get("trains", ["?"]))


def _rep(results: dict, road: str, experiment: str = "main") -> dict | None:
    order = ("ppo", "ppo-shared") if road == RLHF else ("dpo",)
    runs = [r for r in results["runs"] if r["road"] == road and r["experiment"] == experiment
            and _trains(results, r)]
    for name in order:
        for r in runs:
            if r["method"] == name:
                return r
    return runs[0] if runs else None


def _quality(run: dict | None) -> float | None:
    if not run or "score" not in run:
        return None
    return run["score"].get(f"eval/{run['quality_metric']}")


def scale_text(k: float) -> str:
    """A multiplier as the report writes it: 3, 1/3, 0.02."""
    from fractions import Fraction

    near = Fraction(k).limit_denominator(10)
    return f"{near}" if abs(float(near) - k) < 1e-3 else f"{k:g}"


def _row(key: str, rlhf: dict, dpo: dict, winner: str | None, note: str = "", *,
         basis: str = "", test: stats.Test | None = None) -> dict:
    """One row. ``winner``: RLHF, DPO, tie (counted figures only), no significant difference,
    not tested (one run per road) or None (not measured). ``basis``: what the verdict rests on
    (counted, or how many runs per road); ``test``: the test behind a measured verdict."""
    criterion, a_rlhf, a_dpo, a_winner = ARTICLE[key]
    agrees = winner == a_winner if winner in ("RLHF", "DPO") and a_winner else None
    return {"id": key, "criterion": criterion, "in_article": a_winner is not None,
            "article": {"rlhf": a_rlhf, "dpo": a_dpo, "winner": a_winner or "-"},
            "rlhf": rlhf, "dpo": dpo, "winner": winner or "not measured", "agrees": agrees,
            "basis": basis if winner else "", "test": test.as_dict() if test else None,
            "note": note}


def _side(text: str, short: str = "", **figures) -> dict:
    return {"text": text, "short": short or text, "figures": figures}


def _missing(why: str, short: str = "not measured") -> dict:
    return {"text": why, "short": short, "figures": {}}


def _tested(test: stats.Test, rlhf_better: bool) -> str:
    """The verdict of a test of RLHF against DPO: the better road when significant."""
    if test.p is None:
        return UNTESTED
    if not test.significant:
        return NO_DIFFERENCE
    return "RLHF" if rlhf_better else "DPO"


def _over_seeds(by_road: dict, *, higher_is_better: bool,
                digits: int = 3) -> tuple[stats.Test, str, str]:
    """Welch's t of RLHF's values against DPO's: the test, the verdict, and the note's clause."""
    test = stats.welch(by_road[RLHF], by_road[DIRECT])
    winner = _tested(test, rlhf_better=(test.difference.mean > 0) == higher_is_better)
    said = ("; one run per road, so no winner is named" if test.p is None else
            f"; Welch t over seeds, alpha {stats.ALPHA:g}: {_test_note(test, digits)}")
    return test, winner, said


def _runs_basis(n_rlhf: int, n_dpo: int, what: str = "seed") -> str:
    if n_rlhf == n_dpo:
        return f"{n_rlhf} {what}{'s' if n_rlhf != 1 else ''} per road"
    return f"{n_rlhf} and {n_dpo} {what}s (RLHF, DPO)"


def _test_note(test: stats.Test, digits: int = 3) -> str:
    if test.p is None:
        return ""
    diff = test.difference
    extra = f"; difference {diff.text(digits, sign=True)} (95% CI, {diff.method})" if (
        diff and diff.low is not None) else ""
    return f"{test.text()}{extra}"


def _lower_wins(a: float | None, b: float | None) -> str | None:
    """The verdict on a counted figure (stages, tensor bytes, settings): the smaller wins."""
    if a is None or b is None:
        return None
    if a == b:
        return "tie"
    return "RLHF" if a < b else "DPO"


# --- the rows ---------------------------------------------------------------------------------
def simplicity(results: dict) -> dict:
    sides = {}
    nproc = results["settings"].get("processes_per_command", 1)
    for road in (RLHF, DIRECT):
        run = _rep(results, road)
        if run is None:
            sides[road] = _missing("not run")
            continue
        commands = ["sft"] + [results["stages"][k]["command"] for k in run["stages"]]
        trained = sorted({t for k in run["stages"] for t in results["stages"][k]["trains"]})
        sides[road] = _side(
            f"{len(commands)} stages ({', '.join(commands)}); {len(trained)} "
            f"model{'s' if len(trained) != 1 else ''} trained after SFT ({', '.join(trained)}); "
            f"{len(commands)} commands, "
            f"{len(commands) * nproc} processes",
            f"{len(commands)} stages, {len(trained)} trained",
            stages=len(commands), models_trained=len(trained), commands=len(commands),
            processes=len(commands) * nproc)
    w = _lower_wins(sides[RLHF]["figures"].get("stages"), sides[DIRECT]["figures"].get("stages"))
    return _row("simplicity", sides[RLHF], sides[DIRECT], w,
                "counted from the commands that actually ran (SFT included)", basis=COUNTED)


def memory_table(results: dict) -> dict:
    """Tensor bytes per role, per method, in units of P = the bytes of one model's weights (the
    SFT model's parameters), and the peak RSS of the process that holds the method's models
    (its last stage: ppo, rloo, dpo, ...; a reward model trains in a process of its own)."""
    jobs = results["jobs"]
    P = None
    for job in jobs.values():
        tb = job.get("tensor_bytes") or {}
        if job["kind"] == "sft" and "policy" in tb:
            P = tb["policy"]["params"]
    for job in jobs.values():
        tb = job.get("tensor_bytes") or {}
        if P is None and tb.get("reference", {}).get("params"):
            P = tb["reference"]["params"]
    configs = []
    seen = set()
    for run in results["runs"]:
        if run["experiment"] not in ("main", "probe") or run["method"] in seen:
            continue
        policy_job = jobs.get(run["policy"], {})
        tb = policy_job.get("tensor_bytes")
        if not tb:
            continue
        seen.add(run["method"])
        # the process that holds the method's models (its last stage); the reward model's own
        # training is a separate process, reported with its stage
        rss = policy_job.get("peak_rss_bytes") or policy_job.get("process_peak_rss_bytes")
        total = sum(r["total"] for r in tb.values())
        weights = sum(r["params"] for r in tb.values())
        configs.append({"method": run["method"], "label": run["memory_label"], "road": run["road"],
                        "run_dir": policy_job.get("run_dir"), "roles": tb, "total": total,
                        "weights": weights, "peak_rss_bytes": rss or None,
                        "total_P": total / P if P else None,
                        "weights_P": weights / P if P else None,
                        "probe": run["experiment"] == "probe"})
    rlhf = [c for c in configs if c["road"] == RLHF]
    direct = [c for c in configs if c["road"] == DIRECT and c["method"] != "ipo"]
    ratios = {r["method"]: {d["method"]: r["total"] / d["total"] for d in direct if d["total"]}
              for r in rlhf}
    return {"P": P, "configs": configs, "ratios": ratios}


def memory(results: dict) -> dict:
    table = results["memory"]
    by = {c["method"]: c for c in table["configs"]}
    sides = {}
    for road, names in ((RLHF, ("ppo", "ppo-shared", "rloo", "grpo", "bon")),
                        (DIRECT, ("dpo", "dpo-precomputed", "simpo", "ipo", "kto"))):
        present = [by[n] for n in names if n in by]
        trained = [c for c in present if any(r.get("optimizer") for r in c["roles"].values())]
        if not trained:  # best-of-n alone trains nothing: it cannot stand for a road
            sides[road] = _missing("not run")
            continue
        main = trained[0]
        present = [main] + [c for c in present if c is not main]
        parts = [f"{c['label']}: {f(c['weights_P'], 1)}P weights, {f(c['total_P'], 1)}P with "
                 f"grads and AdamW, peak RSS {mib(c['peak_rss_bytes'])}" for c in present]
        sides[road] = _side("; ".join(parts),
                            f"{f(main['weights_P'], 1)}P weights, {f(main['total_P'], 1)}P "
                            "in all", weights_P=main["weights_P"],
                            total_P=main["total_P"], total_bytes=main["total"],
                            peak_rss_bytes=main["peak_rss_bytes"],
                            others={c["method"]: {"weights_P": c["weights_P"],
                                                  "total_P": c["total_P"]} for c in present[1:]})
    a = sides[RLHF]["figures"].get("total_bytes")
    b = sides[DIRECT]["figures"].get("total_bytes")
    note = ""
    if a and b:
        note = f"tensor bytes, counted (peak RSS is shown, not tested): RLHF/DPO {a / b:.2f}x"
        sides[RLHF]["figures"]["ratio_to_dpo"] = a / b
        if "ppo-shared" in by and "dpo" in by:
            ratio = by["ppo-shared"]["total"] / by["dpo"]["total"]
            sides[RLHF]["figures"]["shared_ratio_to_dpo"] = ratio
            note += f" (classic), {ratio:.2f}x (shared)"
        note += f"; P = {mib(table['P'])}"
    return _row("memory", sides[RLHF], sides[DIRECT], _lower_wins(a, b), note,
                basis="counted")


def _spikes(losses: list[float], window: int = 10, z: float = 4.0) -> int:
    count = 0
    for i in range(window, len(losses)):
        prev = losses[i - window : i]
        sd = statistics.pstdev(prev)
        if sd > 0 and losses[i] > statistics.fmean(prev) + z * sd:
            count += 1
    return count


def _seed_runs(results: dict, rep: dict) -> list[dict]:
    """The representative method's runs at its base settings: seed 0 and the other seeds."""
    return [r for r in results["runs"] if r["method"] == rep["method"]
            and r["experiment"] in ("main", "seed")]


def stability(results: dict) -> dict:
    limit = results["settings"].get("kl_blowup", 10.0)
    sides, finals_by, failures = {}, {}, {}
    metric = results["quality"]["metric"]
    for road in (RLHF, DIRECT):
        rep = _rep(results, road)
        if rep is None:
            sides[road] = _missing("not run")
            continue
        runs = _seed_runs(results, rep)
        finals = [q for q in (_quality(r) for r in runs) if q is not None]
        failed = sum(r["status"] != "done" for r in runs)
        nonfinite = sum(r["curves"]["nonfinite"] for r in runs)
        spikes = sum(_spikes([t["loss"] for t in r["curves"]["train"] if t["loss"] is not None])
                     for r in runs)
        blowups = sum(any((e["kl"] or 0) > limit for e in r["curves"]["eval"]) for r in runs)
        if len(finals) < 2:
            sides[road] = _missing(f"needs 2 or more seeds ({len(finals)} finished); "
                                   "run --preset standard or --seeds 3",
                                   f"{len(finals)} seed")
            continue
        std = statistics.stdev(finals)
        ci = stats.mean_ci(finals)
        # a run that failed on a non-finite value counts once
        bad = sum(r["status"] != "done" or bool(r["curves"]["nonfinite"]) for r in runs)
        finals_by[road], failures[road] = finals, (bad, len(runs))
        sides[road] = _side(
            f"{metric} {ci.text()} over {len(finals)} seeds (mean, 95% CI); sd {f(std)}, worst "
            f"{f(min(finals))}; {spikes} loss spikes, {blowups} KL blow-ups (> {limit:g} nats), "
            f"{nonfinite} non-finite, {failed} failed",
            f"sd {f(std)} over {len(finals)} seeds",
            mean=ci.mean, ci=ci.as_dict(), std=std, worst=min(finals), seeds=len(finals),
            loss_spikes=spikes, kl_blowups=blowups, nonfinite=nonfinite, failed=failed,
            finals=finals)
    if len(finals_by) < 2:
        return _row("stability", sides[RLHF], sides[DIRECT], None,
                    "spread of the final score over seeds (needs 2 or more per road)")
    test = stats.variance_test(finals_by[RLHF], finals_by[DIRECT])
    winner = _tested(test, rlhf_better=(test.statistic or 0) < 1)
    n_r, n_d = len(finals_by[RLHF]), len(finals_by[DIRECT])
    note = (f"spread of the final score over seeds: the two-sided F test of the variances, "
            f"alpha {stats.ALPHA:g}: variance ratio RLHF/DPO {f(test.statistic, 2)}, "
            f"p = {test.p:.3g}")
    smallest = stats.detectable_spread_ratio(n_r, n_d)
    if not test.significant and smallest:
        note += (f"; at {n_r} and {n_d} seeds only a ratio of standard deviations above "
                 f"{smallest:.1f}x can be told apart: more seeds are needed to name a steadier "
                 "road")
    fails = {road: k for road, (k, _) in failures.items()}
    if fails[RLHF] != fails[DIRECT]:
        failed_test = stats.fisher_exact(fails[RLHF], failures[RLHF][1], fails[DIRECT],
                                         failures[DIRECT][1])
        note += (f"; failed or non-finite runs {fails[RLHF]} of {failures[RLHF][1]} against "
                 f"{fails[DIRECT]} of {failures[DIRECT][1]} ({failed_test.text()})")
        if failed_test.significant and winner == NO_DIFFERENCE:
            winner = "RLHF" if fails[RLHF] < fails[DIRECT] else "DPO"
    note += ("; a loss spike is a logged loss 4 standard deviations above the mean of the 10 "
             "before it")
    return _row("stability", sides[RLHF], sides[DIRECT], winner, note,
                basis=_runs_basis(n_r, n_d), test=test)


def _pairs_count(results: dict, share: str) -> int | None:
    return results["inputs"].get("pair_counts", {}).get(share)


def efficiency(results: dict) -> dict:
    sft = (results["sft"]["score"] or {}).get(f"eval/{results['quality']['metric']}")
    sides, areas = {}, {}
    for road in (RLHF, DIRECT):
        rep = _rep(results, road)
        if rep is None or sft is None:
            sides[road] = _missing("not run")
            continue
        points = []
        for r in results["runs"]:
            if r["method"] != rep["method"] or r["experiment"] not in ("main", "efficiency"):
                continue
            share = r["variant"]["pairs"]
            q = _quality(r)
            if q is not None:
                points.append({"share": share, "pairs": _pairs_count(results, share),
                               "gain": q - sft, "run_dir": r["run_dir"]})
        points.sort(key=lambda p: p["pairs"] or 0)
        if len(points) < 2:
            sides[road] = _missing("needs runs on fewer pairs; run --preset standard")
            continue
        areas[road] = {p["share"]: p["gain"] for p in points}
        mean_gain = statistics.fmean(p["gain"] for p in points)
        sides[road] = _side(", ".join(f"{p['gain']:+.3f} at {p['pairs']} pairs" for p in points),
                            f"mean gain {mean_gain:+.3f}, {len(points)} sizes",
                            points=points, mean_gain=mean_gain)
    if len(areas) < 2:
        return _row("efficiency", sides[RLHF], sides[DIRECT], None,
                    "gain over SFT against labelled pairs (needs runs on fewer pairs)")
    shares = [k for k in areas[RLHF] if k in areas[DIRECT]]
    test = stats.paired([areas[RLHF][k] for k in shares], [areas[DIRECT][k] for k in shares])
    winner = _tested(test, rlhf_better=test.difference.mean > 0)
    return _row("efficiency", sides[RLHF], sides[DIRECT], winner,
                "gain over SFT against labelled pairs; the RLHF road trains its reward model on "
                "the same pairs, then PPO on unlabelled prompts; the test pairs the two roads' "
                f"gains at each of the {len(shares)} data sizes (paired t, alpha "
                f"{stats.ALPHA:g}; one seed per size): {_test_note(test)}",
                basis=f"1 run per data size, {len(shares)} sizes", test=test)


def flexibility(results: dict) -> dict:
    w_h = results["inputs"].get("harmlessness_weight", 1.0)
    sides, scores, walls, per_prompt = {}, {}, {}, {}
    for road in (RLHF, DIRECT):
        run = next((r for r in results["runs"] if r["road"] == road
                    and r["experiment"] == "flexibility"), None)
        before = _rep(results, road)
        if run is None or "score" not in run:
            sides[road] = _missing("not measured (the world's flexibility experiment runs in "
                                   "--preset standard and full)")
            continue
        new = run["score"]["eval/gold_reward"] + w_h * run["score"]["eval/harmlessness"]
        old = (before["score"]["eval/gold_reward"] + w_h * before["score"]["eval/harmlessness"]
               if before and "score" in before else None)
        wall = sum(results["jobs"][k]["wall_s"] or 0 for k in run["stages"]
                   if k not in (before["stages"] if before and road == RLHF else []))
        new_stages = [k for k in run["stages"] if k not in (before["stages"] if before else [])]
        labels = _pairs_count(results, "new")
        how = ("retrained its reward model and continued PPO from its policy"
               if road == RLHF else "retrained from SFT on the relabelled pairs")
        scores[road], walls[road] = new, wall
        per_prompt[road] = _objective_per_prompt(run, w_h)
        sides[road] = _side(f"new objective {f(new)} (before the change {f(old)}) after "
                            f"{wall:.0f} s: {how} ({', '.join(new_stages)}); {labels} new labels",
                            f"{f(new)} after {wall:.0f} s",
                            new_objective=new, before=old, wall_s=wall, new_labels=labels)
    w, test, note = None, None, ""
    if len(scores) == 2:
        w = UNTESTED  # one run per road: nothing measures how the score varies between seeds
        if per_prompt[RLHF] and per_prompt[DIRECT]:
            test = stats.paired(per_prompt[RLHF], per_prompt[DIRECT])
            note = (f"; RLHF - DPO on the new objective {test.difference.text(sign=True)} "
                    f"(95% CI over the {test.difference.n} held-out prompts, paired t: the "
                    "evaluation's sampling only, not the variation between training seeds)")
    return _row("flexibility", sides[RLHF], sides[DIRECT], w,
                f"the objective changes to gold + {w_h:g} x harmlessness; the higher "
                f"new-objective score is better; one run per road, so no winner is named{note}",
                basis="1 run per road", test=test)


def _objective_per_prompt(run: dict, weight: float) -> list[float] | None:
    """gold + weight x harmlessness, per held-out prompt (from the run's score file)."""
    pp = run.get("per_prompt") or {}
    gold, harm = pp.get("gold_reward"), pp.get("harmlessness")
    if not gold or not harm or len(gold) != len(harm):
        return None
    return [g + weight * h for g, h in zip(gold, harm)]


def _to_90(run: dict, offset: float) -> float | None:
    """Seconds (from the road's first stage) until the run's own evaluation curve first
    reached 90% of its final gain over its first evaluation; None without a gain."""
    evals = run["curves"]["eval"]
    if len(evals) < 2 or evals[-1]["quality"] <= evals[0]["quality"]:
        return None
    target = evals[0]["quality"] + 0.9 * (evals[-1]["quality"] - evals[0]["quality"])
    for e in evals:
        if e["quality"] >= target and e["elapsed_s"] is not None:
            return offset + e["elapsed_s"]
    return None


def training_time(results: dict) -> dict:
    sides, cpu_by = {}, {}
    for road in (RLHF, DIRECT):
        run = _rep(results, road)
        if run is None:
            sides[road] = _missing("not run")
            continue
        jobs = [results["jobs"][k] for k in run["stages"]]
        walls = [j["wall_s"] or 0 for j in jobs]
        cpus = [j["cpu_s"] or 0 for j in jobs]
        parts = " + ".join(f"{results['stages'][k]['command']} {w:.0f} s"
                           for k, w in zip(run["stages"], walls))
        split = jobs[-1].get("time_s") or {}  # PPO: generation, scoring, no-grad passes, updates
        if split:
            parts += (f" (generation {split.get('generation', 0):.0f} s, updates "
                      f"{split.get('forward', 0) + split.get('training', 0):.0f} s)")
        t90 = _to_90(run, sum(walls[:-1]))
        when = (f"90% of its gain after {t90:.0f} s" if t90 is not None
                else "no gain over its first evaluation")
        done = [r for r in _seed_runs(results, run) if r["status"] == "done"]
        seeds = [sum(results["jobs"][k]["cpu_s"] or 0 for k in r["stages"]) for r in done]
        seed_walls = [sum(results["jobs"][k]["wall_s"] or 0 for k in r["stages"]) for r in done]
        cpu_by[road] = seeds or [sum(cpus)]
        over = ""
        if len(seeds) > 1:
            over = (f"; over {len(seeds)} seeds {stats.mean_ci(seeds).text(0)} CPU s (mean, "
                    f"95% CI; wall {', '.join(f'{w:.0f}' for w in seed_walls)} s)")
        sides[road] = _side(f"{parts} = {sum(walls):.0f} s wall, {sum(cpus):.0f} CPU s; "
                            f"{when}{over}",
                            f"{statistics.fmean(cpu_by[road]):.0f} CPU s"
                            + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""),
                            wall_s=sum(walls), cpu_s=sum(cpus), stage_wall_s=walls,
                            to_90_s=t90, time_s=split or None, seed_cpu_s=seeds,
                            seed_wall_s=seed_walls)
    sft = results["jobs"].get("sft", {}).get("wall_s")
    shared = f"the shared SFT took {sft:.0f} s; " if sft else ""
    note = (f"{shared}wall and CPU time of each road's own stages (SFT and the pairs "
            "excluded), each a fresh process on the same machine, with other runs beside it as "
            "--jobs allows; the test compares CPU seconds, the work each road's processes did "
            "on the threads they were given, because wall time also counts what else shared "
            "the machine; 90%: when the run's evaluation curve first reached 90% of its final "
            "gain, counted from the road's first stage")
    if len(cpu_by) < 2:
        return _row("time", sides[RLHF], sides[DIRECT], None, note)
    test, winner, said = _over_seeds(cpu_by, higher_is_better=False, digits=0)
    note += said
    return _row("time", sides[RLHF], sides[DIRECT], winner, note,
                basis=_runs_basis(len(cpu_by[RLHF]), len(cpu_by[DIRECT])), test=test)


def _knobs(command: str, section: str = "") -> tuple[int, int]:
    """(method-specific hyperparameters, all hyperparameters) a stage's command exposes, as
    its registry entry counts them (``preflab.algorithms.Method.knobs``), with the loss its
    compare entry passes (``section``: the stage's hyperparameter section); 0, 0 for a
    command that trains nothing (best-of-n)."""
    from preflab.algorithms import registry

    method = registry().get(command)
    if method is None:
        return 0, 0
    entry = next((c for c in method.compared if c.hyper_section == section), None)
    return method.knobs(loss=entry.flags.get("loss", "") if entry else "")


def hyperparameters(results: dict) -> dict:
    sides, shares, knobs = {}, {}, {}
    sft = (results["sft"]["score"] or {}).get(f"eval/{results['quality']['metric']}")
    for road in (RLHF, DIRECT):
        rep = _rep(results, road)
        if rep is None:
            sides[road] = _missing("not run")
            continue
        counts = [(results["stages"][k]["command"],
                   *_knobs(results["stages"][k]["command"], results["stages"][k].get("hyper", "")))
                  for k in rep["stages"]]
        own, total = sum(c[1] for c in counts), sum(c[2] for c in counts)
        knobs[road] = own
        text = (f"{own} method-specific ({', '.join(f'{c[0]} {c[1]}' for c in counts)}), "
                f"{total} with the optimiser's")
        grid = [r for r in results["runs"] if r["method"] == rep["method"]
                and (r["experiment"] == "sensitivity" or r is rep)]
        gains = [q - sft for q in (_quality(r) for r in grid) if q is not None and sft is not None]
        figures = {"method_specific": own, "total": total,
                   "per_stage": {c[0]: {"method_specific": c[1], "total": c[2]} for c in counts}}
        if len(gains) >= 9:
            best = max(gains)
            share = sum(g >= 0.8 * best for g in gains) / len(gains) if best > 0 else 0.0
            shares[road] = share
            strength = "kl_coef" if road == RLHF else "beta"
            text += (f"; {sum(g >= 0.8 * best for g in gains)}/{len(gains)} of the lr x "
                     f"{strength} grid within 80% of the best gain ({best:+.3f})")
            figures.update(grid_share=share, best_gain=best, grid_gains=gains)
        sides[road] = _side(text, **figures)
    for side in sides.values():
        fig = side["figures"]
        side["short"] = (f"{fig.get('method_specific')} own, {fig.get('total')} in all"
                         if fig else side["short"])
        if "grid_share" in fig:
            n = len(fig["grid_gains"])
            side["short"] += f"; {round(fig['grid_share'] * n)}/{n} of grid near best"
    test = None
    if len(shares) == 2:
        n = {road: len(sides[road]["figures"]["grid_gains"]) for road in shares}
        near = {road: round(shares[road] * n[road]) for road in shares}
        test = stats.fisher_exact(near[RLHF], n[RLHF], near[DIRECT], n[DIRECT])
        w = _tested(test, rlhf_better=shares[RLHF] > shares[DIRECT])
        note = ("the share of the sensitivity grid within 80% of the best gain, the larger "
                f"the better: Fisher's exact test, alpha {stats.ALPHA:g}, p = {test.p:.3g} "
                f"(one seed per grid cell); the counts: {knobs.get(RLHF)} against "
                f"{knobs.get(DIRECT)} method-specific settings")
        basis = f"{n[RLHF]} and {n[DIRECT]} grid runs, 1 seed each"
    else:
        w = _lower_wins(knobs.get(RLHF), knobs.get(DIRECT))
        note = ("winner: fewer method-specific hyperparameters (the sensitivity grid runs in "
                "--preset full)")
        basis = COUNTED
    return _row("hyperparameters", sides[RLHF], sides[DIRECT], w, note, basis=basis, test=test)


def hacking_curve(run: dict) -> dict | None:
    evals = [e for e in run["curves"]["eval"] if e["quality"] is not None]
    if len(evals) < 2:
        return None
    peak = max(evals, key=lambda e: e["quality"])
    final = evals[-1]
    proxy_key = "proxy" if any(e["proxy"] is not None for e in evals) else "margin"
    proxies = [e[proxy_key] for e in evals if e[proxy_key] is not None]
    return {"run_dir": run["run_dir"], "experiment": run["experiment"], "peak": peak["quality"],
            "peak_step": peak["step"], "kl_at_peak": peak["kl"], "final": final["quality"],
            "kl_final": final["kl"], "drop": peak["quality"] - final["quality"],
            "proxy": proxy_key, "proxy_first": proxies[0] if proxies else None,
            "proxy_last": proxies[-1] if proxies else None}


def _mean(values) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.fmean(xs) if xs else None


def hacking(results: dict) -> dict:
    """Each road pushed the same way; tested: its held-out quality at the end against SFT's
    (a road that hacks its proxy ends below where it started). The drop from the peak of the
    training curve is shown, not tested: a maximum over noisy evaluations, never below 0."""
    metric = results["quality"]["metric"]
    sft = (results["sft"]["score"] or {}).get(f"eval/{metric}")
    sides, changes, pushed = {}, {}, {}
    pressure = next((r["variant"] for r in results["runs"] if r["experiment"] == "hacking"), None)
    for road in (RLHF, DIRECT):
        rep = _rep(results, road) or next(
            (r for r in results["runs"] if r["road"] == road and _trains(results, r)), None)
        mine = [r for r in results["runs"] if rep and r["method"] == rep["method"]]
        hack = [r for r in mine if r["experiment"] == "hacking"]
        pushed[road] = bool(hack)
        basis = hack or [r for r in mine if r["experiment"] in ("main", "seed")]
        found = [c for c in (hacking_curve(r) for r in basis) if c]
        everything = [c for c in (hacking_curve(r) for r in mine if r["experiment"] != "probe")
                      if c]
        finals = [q for q in (_quality(r) for r in basis) if q is not None]
        if not found or not finals or sft is None:
            sides[road] = _missing("no evaluation curve")
            continue
        changes[road] = [q - sft for q in finals]
        change = stats.mean_ci(changes[road])
        drop = stats.mean_ci([c["drop"] for c in found])
        proxy = "reward-model score" if found[0]["proxy"] == "proxy" else "implicit reward margin"
        where = "pushed (see the note)" if hack else "at its base settings"
        over = (f"over {len(finals)} runs (mean, 95% CI)" if change.low is not None else
                "in its one run")
        text = (f"{where}: scored {metric} at the end {change.text(sign=True)} against SFT's "
                f"{sft:.3f} {over}; {proxy} {f(_mean(c['proxy_first'] for c in found))} -> "
                f"{f(_mean(c['proxy_last'] for c in found))} while {metric} fell {f(drop.mean)} "
                "from its peak on average (the peak of noisy evaluations: never below 0)")
        worst = max(everything, key=lambda c: c["drop"])
        text += (f"; every run counts: the worst of all {len(everything)} runs of "
                 f"{rep['label']} fell {f(worst['drop'])} (`{worst['run_dir']}`, "
                 f"{worst['experiment']}: from {f(worst['peak'])} to {f(worst['final'])} at KL "
                 f"{f(worst['kl_final'], 1)})")
        sides[road] = _side(text, f"{change.mean:+.3f} vs SFT ({len(finals)} "
                                  f"run{'s' if len(finals) != 1 else ''})",
                            change=change.as_dict(), drop=drop.as_dict(), runs=found,
                            worst_of_all=worst, all_runs=len(everything),
                            max_drop=max(c["drop"] for c in found))
    if pressure and all(pushed.values()):
        how = ("both roads pushed the same way: the same "
               f"{pressure['pairs']} of the pairs (DPO trains on them, PPO on a reward model "
               f"trained on them), beta or kl_coef multiplied by the same "
               f"{pressure.get('strength_scale', 1):g} and {pressure.get('steps_scale', 1):g}x "
               "the steps")
    elif pressure:
        how = "only one road has runs pushed this way; the other is shown at its base settings"
    else:
        how = "each road's base runs (the pushed runs are in --preset standard and full)"
    note = (f"proxy against gold over training, {how}; tested: the held-out {metric} at the end "
            "against SFT's, the higher the better (a road that games its proxy ends lower); "
            "every run of each road (grid and sweeps included) is searched for its worst drop "
            "from its peak, shown beside")
    if len(changes) < 2:
        return _row("hacking", sides[RLHF], sides[DIRECT], None, note)
    test, winner, said = _over_seeds(changes, higher_is_better=True)
    if not all(pushed.values()) and pressure:
        winner = UNTESTED if winner in ("RLHF", "DPO") else winner
        note += "; the roads were not pushed alike, so no winner is named"
    note += said
    return _row("hacking", sides[RLHF], sides[DIRECT], winner, note,
                basis=_runs_basis(len(changes[RLHF]), len(changes[DIRECT]), "run"), test=test)


# --- alignment quality: the policy each road made -----------------------------------------------
SETTING_EXPERIMENTS = ("main", "seed", "sensitivity", "frontier")


def road_settings(results: dict, road: str, base_lr_only: bool = False) -> list[dict]:
    """The representative method's scored runs grouped by setting (learning rate and beta or
    kl_coef multipliers): each setting's final quality and sampled KL over its seeds."""
    from preflab.compare.methods import REGISTRY

    rep = _rep(results, road)
    if rep is None:
        return []
    groups: dict[tuple, list[dict]] = {}
    for r in results["runs"]:
        if (r["method"] != rep["method"] or r["experiment"] not in SETTING_EXPERIMENTS
                or _quality(r) is None or r["score"].get("eval/kl") is None):
            continue
        v = r["variant"]
        if base_lr_only and v["lr_scale"] != 1:
            continue
        groups.setdefault((v["lr_scale"], v["strength_scale"]), []).append(r)
    method = REGISTRY.get(rep["method"])
    out = []
    for (lr, k), runs in sorted(groups.items()):
        golds = [_quality(r) for r in runs]
        kls = [r["score"]["eval/kl"] for r in runs]
        out.append({"label": rep["label"], "method": rep["method"], "road": road,
                    "lr_scale": lr, "strength_scale": k,
                    "strength": method.strength if method else "beta", "n": len(runs),
                    "quality": stats.mean_ci(golds).as_dict(), "kl": stats.mean_ci(kls).as_dict(),
                    "qualities": golds, "kls": kls, "run_dirs": [r["run_dir"] for r in runs],
                    "per_prompt": [(r.get("per_prompt") or {}).get(results["quality"]["metric"])
                                   for r in runs]})
    return out


def best_within(settings: list[dict], bound: float) -> tuple[dict | None, int]:
    """The best setting whose mean KL is at most ``bound``, among those with the most seeds
    (a setting run once would win on luck), and how many settings it was picked from."""
    if not settings:
        return None, 0
    most = max(s["n"] for s in settings)
    candidates = [s for s in settings if s["n"] == most]
    within = [s for s in candidates if s["kl"]["mean"] <= bound]
    return (max(within, key=lambda s: s["quality"]["mean"]) if within else None), len(within)


def compare_settings(a: dict, b: dict) -> tuple[stats.Test, bool]:
    """Quality of setting a against b: Welch's t over seeds when both have 2 or more, else the
    paired t over held-out prompts (the evaluation's sampling only). Returns (test, over_seeds)."""
    if a["n"] >= 2 and b["n"] >= 2:
        return stats.welch(a["qualities"], b["qualities"]), True
    pa, pb = a["per_prompt"][0], b["per_prompt"][0]
    if pa and pb and len(pa) == len(pb):
        return stats.paired(pa, pb), False
    return stats.welch(a["qualities"], b["qualities"]), False


def _gain(results: dict, setting: dict) -> stats.Interval:
    """The setting's gain over SFT: over seeds (t), or for one run over held-out prompts."""
    metric = results["quality"]["metric"]
    sft = (results["sft"]["score"] or {}).get(f"eval/{metric}")
    if setting["n"] >= 2:
        return stats.mean_ci([q - sft for q in setting["qualities"]])
    sft_pp = (results["sft"].get("per_prompt") or {}).get(metric)
    pp = setting["per_prompt"][0]
    if pp and sft_pp and len(pp) == len(sft_pp):
        return stats.paired(pp, sft_pp).difference
    return stats.Interval(setting["qualities"][0] - sft, None, None, 1, "one value")


def quality(results: dict) -> dict:
    metric = results["quality"]["metric"]
    bound = results["settings"].get("kl_bound", 10.0)
    sft = (results["sft"]["score"] or {}).get(f"eval/{metric}")
    sides, best, counts = {}, {}, {}
    for road in (RLHF, DIRECT):
        settings = road_settings(results, road)
        pick, counts[road] = best_within(settings, bound)
        if sft is None or not settings:
            sides[road] = _missing("not run")
            continue
        if pick is None:
            sides[road] = _missing(f"no setting within KL {bound:g} (the lowest: "
                                   f"{min(s['kl']['mean'] for s in settings):.2f})",
                                   f"none within KL {bound:g}")
            continue
        best[road] = pick
        gain = _gain(results, pick)
        pick["gain"] = gain.as_dict()
        over = (f"(mean, 95% CI, {pick['n']} seeds)" if pick["n"] >= 2 else
                "(one run; 95% CI over held-out prompts)" if gain.low is not None else
                "(one run)")
        setting = (f"{pick['strength']} x{scale_text(pick['strength_scale'])}"
                   + (f", lr x{scale_text(pick['lr_scale'])}" if pick["lr_scale"] != 1 else ""))
        sides[road] = _side(
            f"{pick['label']}: {metric} {gain.text(sign=True)} over SFT ({sft:.3f}) at KL "
            f"{pick['kl']['mean']:.2f} {over}; {setting}, the best of "
            f"{counts[road]} setting{'s' if counts[road] != 1 else ''} within KL {bound:g}",
            f"{gain.mean:+.3f} at KL {pick['kl']['mean']:.2f}",
            gain=gain.as_dict(), kl=pick["kl"], setting=setting, n=pick["n"],
            run_dirs=pick["run_dirs"], settings_compared=counts[road], label=pick["label"])
    note = (f"the policy each road made: the gain in {metric} over SFT of each road's best "
            f"setting whose mean sampled KL to SFT is at most {bound:g} nats (--kl-bound), "
            "among its settings with the most seeds; not a row of the article")
    if len(best) < 2:
        return _row("quality", sides[RLHF], sides[DIRECT], None, note)
    test, over_seeds = compare_settings(best[RLHF], best[DIRECT])
    picks = counts[RLHF] * counts[DIRECT]
    raw = test
    if over_seeds:
        test = stats.bonferroni(test, picks)
        winner = _tested(test, rlhf_better=test.difference.mean > 0)
        note += f"; Welch t over seeds, alpha {stats.ALPHA:g}: {_test_note(raw)}"
        if picks > 1:
            note += (f"; each road's best of {counts[RLHF]} and {counts[DIRECT]} settings is "
                     f"picked after the fact, so the p-value is multiplied by the {picks} "
                     f"pairs it was picked from (Bonferroni): p = {test.p:.3g}")
        basis = _runs_basis(best[RLHF]["n"], best[DIRECT]["n"])
    else:
        winner = UNTESTED
        note += ("; one run per road, so no winner is named"
                 + (f"; RLHF - DPO {test.difference.text(sign=True)} (95% CI over held-out "
                    "prompts, paired t: the evaluation's sampling only)"
                    if test.p is not None else ""))
        basis = "1 run per road"
    row = _row("quality", sides[RLHF], sides[DIRECT], winner, note, basis=basis, test=test)
    if over_seeds and row["test"]:
        row["test"]["p_unadjusted"] = raw.p
    return row


def frontier_tests(results: dict, budgets, by_road: dict | None = None) -> list[dict]:
    """At each KL budget, each road's best setting within it and the test between the two:
    the frontier's dominance, tested rather than read off one point. ``by_road``: each road's
    settings at the base learning rate (``road_settings``), when already computed."""
    by_road = by_road or {road: road_settings(results, road, base_lr_only=True)
                          for road in (RLHF, DIRECT)}
    out = []
    for bound in budgets:
        entry = {"kl_bound": bound}
        picks, counts = {}, {}
        for road, settings in by_road.items():
            pick, counts[road] = best_within(settings, bound)
            if pick is not None:
                picks[road] = pick
                entry[road] = {"strength_scale": pick["strength_scale"], "n": pick["n"],
                               "quality": pick["quality"], "kl": pick["kl"],
                               "gain": _gain(results, pick).as_dict()}
        if len(picks) == 2:
            test, over_seeds = compare_settings(picks[RLHF], picks[DIRECT])
            if over_seeds:
                test = stats.bonferroni(test, counts[RLHF] * counts[DIRECT])
            entry["test"] = test.as_dict()
            entry["over_seeds"] = over_seeds
            entry["winner"] = (_tested(test, rlhf_better=test.difference.mean > 0)
                               if over_seeds else UNTESTED)
        else:
            only = next(iter(picks), None)
            entry["winner"] = (f"only {'RLHF' if only == RLHF else 'DPO'} has a setting "
                               "within it") if only else "neither road has a setting within it"
        out.append(entry)
    return out


ROWS = (simplicity, memory, stability, efficiency, flexibility, training_time, hyperparameters,
        hacking, quality)


def rows(results: dict) -> list[dict]:
    for run in results["runs"]:
        run["quality_metric"] = results["quality"]["metric"]
    results["memory"] = memory_table(results)
    return [row(results) for row in ROWS]
