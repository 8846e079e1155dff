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
from dataclasses import fields as dataclass_fields

from preflab.compare.methods import DIRECT, RLHF

ARTICLE = {
    "simplicity": ("Simplicity", "Complex (3 stages)", "Simple (2 stages)", "DPO"),
    "memory": ("Memory usage", "~4x base model", "~2x base model", "DPO"),
    "stability": ("Training stability", "Can be unstable", "Very stable", "DPO"),
    "efficiency": ("Sample efficiency", "Lower per pair", "Higher per pair", "DPO"),
    "flexibility": ("Flexibility", "High", "Moderate", "RLHF"),
    "time": ("Training time", "Longer", "Shorter", "DPO"),
    "hyperparameters": ("Hyperparameters", "Many (~10+)", "Few (~2-3)", "DPO"),
    "hacking": ("Risk of reward hacking", "Common", "Rare", "DPO"),
}
# Settings that are not hyperparameters of the method: data, output, logging, evaluation.
NOT_HYPERPARAMETERS = {
    "model", "data", "data_split", "data_config", "output_dir", "eval_data", "eval_data_split",
    "eval_fraction", "seed", "log_every", "eval_every",
    "eval_batch_size", "save_every", "save_total_limit", "resume", "overwrite", "report_to",
    "progress", "allow_pickle", "trust_remote_code", "device", "precision", "attn_implementation",
    "gradient_checkpointing",
    "eval_prompts", "gold_reward", "eval_num_prompts", "eval_max_new_tokens", "eval_temperature",
    "ref_model", "value_model", "reward", "memory_mode", "generation_batch_size", "precompute_ref",
    "max_length", "max_prompt_length", "overlong", "lora_target_modules", "lora_dropout",
    "top_p",  # PPO refuses anything but 1.0 (its training passes score the full softmax)
    # how a run executes, not what it computes: the same losses and weights either way
    "fsdp", "padding_free",
}
TIE = 0.005


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


def _row(key: str, rlhf: dict, dpo: dict, winner: str | None, note: str = "") -> dict:
    criterion, a_rlhf, a_dpo, a_winner = ARTICLE[key]
    agrees = None if winner in (None, "tie") else winner == a_winner
    return {"id": key, "criterion": criterion,
            "article": {"rlhf": a_rlhf, "dpo": a_dpo, "winner": a_winner},
            "rlhf": rlhf, "dpo": dpo, "winner": winner or "not measured", "agrees": agrees,
            "note": note}


def _side(text: str, **figures) -> dict:
    return {"text": text, "figures": figures}


def _missing(why: str) -> dict:
    return {"text": why, "figures": {}}


def _lower_wins(a: float | None, b: float | None, tie: float = 0.0) -> str | None:
    if a is None or b is None:
        return None
    if abs(a - b) <= tie:
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
            stages=len(commands), models_trained=len(trained), commands=len(commands),
            processes=len(commands) * nproc)
    w = _lower_wins(sides[RLHF]["figures"].get("stages"), sides[DIRECT]["figures"].get("stages"))
    return _row("simplicity", sides[RLHF], sides[DIRECT], w,
                "counted from the commands that actually ran (SFT included)")


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
        sides[road] = _side("; ".join(parts), weights_P=main["weights_P"],
                            total_P=main["total_P"], total_bytes=main["total"],
                            peak_rss_bytes=main["peak_rss_bytes"],
                            others={c["method"]: {"weights_P": c["weights_P"],
                                                  "total_P": c["total_P"]} for c in present[1:]})
    a = sides[RLHF]["figures"].get("total_bytes")
    b = sides[DIRECT]["figures"].get("total_bytes")
    note = ""
    if a and b:
        note = f"RLHF/DPO tensor bytes {a / b:.2f}x"
        sides[RLHF]["figures"]["ratio_to_dpo"] = a / b
        if "ppo-shared" in by and "dpo" in by:
            ratio = by["ppo-shared"]["total"] / by["dpo"]["total"]
            sides[RLHF]["figures"]["shared_ratio_to_dpo"] = ratio
            note += f" (classic), {ratio:.2f}x (shared)"
        note += f"; P = {mib(table['P'])}"
    return _row("memory", sides[RLHF], sides[DIRECT], _lower_wins(a, b), note)


def _spikes(losses: list[float], window: int = 10, z: float = 4.0) -> int:
    count = 0
    for i in range(window, len(losses)):
        prev = losses[i - window : i]
        sd = statistics.pstdev(prev)
        if sd > 0 and losses[i] > statistics.fmean(prev) + z * sd:
            count += 1
    return count


def stability(results: dict) -> dict:
    limit = results["settings"].get("kl_blowup", 10.0)
    sides, spread = {}, {}
    for road in (RLHF, DIRECT):
        rep = _rep(results, road)
        if rep is None:
            sides[road] = _missing("not run")
            continue
        runs = [r for r in results["runs"] if r["method"] == rep["method"]
                and r["experiment"] in ("main", "seed")]
        finals = [q for q in (_quality(r) for r in runs) if q is not None]
        failed = sum(r["status"] != "done" for r in runs)
        nonfinite = sum(r["curves"]["nonfinite"] for r in runs)
        spikes = sum(_spikes([t["loss"] for t in r["curves"]["train"] if t["loss"] is not None])
                     for r in runs)
        blowups = sum(any((e["kl"] or 0) > limit for e in r["curves"]["eval"]) for r in runs)
        if len(finals) < 2:
            sides[road] = _missing(f"needs 2 or more seeds ({len(finals)} finished); "
                                   "run --preset standard or --seeds 3")
            continue
        std = statistics.stdev(finals)
        spread[road] = std + 0.1 * (failed + nonfinite)
        sides[road] = _side(
            f"{results['quality']['metric']} {f(statistics.fmean(finals))} +- {f(std)} over "
            f"{len(finals)} seeds (worst {f(min(finals))}); {spikes} loss spikes, {blowups} KL "
            f"blow-ups (> {limit:g} nats), {nonfinite} non-finite, {failed} failed",
            mean=statistics.fmean(finals), std=std, worst=min(finals), seeds=len(finals),
            loss_spikes=spikes, kl_blowups=blowups, nonfinite=nonfinite, failed=failed,
            finals=finals)
    w = _lower_wins(spread.get(RLHF), spread.get(DIRECT), TIE)
    return _row("stability", sides[RLHF], sides[DIRECT], w,
                "spread of the final score over seeds; a failed or non-finite run counts as "
                "0.1 of spread; a loss spike is a logged loss 4 standard deviations above the "
                "mean of the 10 before it")


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
        areas[road] = statistics.fmean(p["gain"] for p in points)
        sides[road] = _side(", ".join(f"{p['gain']:+.3f} at {p['pairs']} pairs" for p in points),
                            points=points, mean_gain=areas[road])
    w = None
    if RLHF in areas and DIRECT in areas:
        w = _lower_wins(-areas[RLHF], -areas[DIRECT], TIE)
    return _row("efficiency", sides[RLHF], sides[DIRECT], w,
                "gain over SFT against labelled pairs; the RLHF road trains its reward model on "
                "the same pairs, then PPO on unlabelled prompts; winner: the larger mean gain")


def flexibility(results: dict) -> dict:
    w_h = results["inputs"].get("harmlessness_weight", 1.0)
    sides, scores, walls = {}, {}, {}
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
        sides[road] = _side(f"new objective {f(new)} (before the change {f(old)}) after "
                            f"{wall:.0f} s: {how} ({', '.join(new_stages)}); {labels} new labels",
                            new_objective=new, before=old, wall_s=wall, new_labels=labels)
    w = None
    if len(scores) == 2:
        w = _lower_wins(-scores[RLHF], -scores[DIRECT], 0.01)
        if w == "tie":
            w = _lower_wins(walls[RLHF], walls[DIRECT])
    return _row("flexibility", sides[RLHF], sides[DIRECT], w,
                f"the objective changes to gold + {w_h:g} x harmlessness; winner: the higher "
                "new-objective score (within 0.01: the faster)")


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
    sides = {}
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
        sides[road] = _side(f"{parts} = {sum(walls):.0f} s wall, {sum(cpus):.0f} CPU s; {when}",
                            wall_s=sum(walls), cpu_s=sum(cpus), stage_wall_s=walls,
                            to_90_s=t90, time_s=split or None)
    w = _lower_wins(sides[RLHF]["figures"].get("wall_s"), sides[DIRECT]["figures"].get("wall_s"))
    sft = results["jobs"].get("sft", {}).get("wall_s")
    shared = f"the shared SFT took {sft:.0f} s; " if sft else ""
    return _row("time", sides[RLHF], sides[DIRECT], w,
                f"{shared}wall time of each road's own stages (SFT and the pairs excluded), each "
                "a fresh process on the same machine; 90%: when the run's evaluation curve "
                "first reached 90% of its final gain, counted from the road's first stage")


def _knobs(command: str) -> tuple[int, int]:
    """(method-specific hyperparameters, all hyperparameters) a command exposes."""
    from preflab.config import TrainConfig

    module = {"dpo": "preflab.algorithms.dpo", "rm": "preflab.algorithms.rm",
              "ppo": "preflab.algorithms.ppo", "kto": "preflab.algorithms.kto",
              "online-dpo": "preflab.algorithms.online_dpo", "rloo": "preflab.algorithms.rloo",
              "grpo": "preflab.algorithms.grpo"}.get(command)
    if module is None:
        return 0, 0
    import importlib

    mod = importlib.import_module(module)
    # the command's own config, defined in its module (not one it imports to build on)
    cls = next(v for v in vars(mod).values() if isinstance(v, type)
               and issubclass(v, TrainConfig) and v.__module__ == mod.__name__)
    shared = {x.name for x in dataclass_fields(TrainConfig)} - NOT_HYPERPARAMETERS
    own = {x.name for x in dataclass_fields(cls)} - NOT_HYPERPARAMETERS
    return len(own - shared), len(own)


def hyperparameters(results: dict) -> dict:
    sides, shares, knobs = {}, {}, {}
    sft = (results["sft"]["score"] or {}).get(f"eval/{results['quality']['metric']}")
    for road in (RLHF, DIRECT):
        rep = _rep(results, road)
        if rep is None:
            sides[road] = _missing("not run")
            continue
        counts = [(results["stages"][k]["command"], *_knobs(results["stages"][k]["command"]))
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
    if len(shares) == 2:
        w = _lower_wins(-shares[RLHF], -shares[DIRECT], 0.0)
        note = "winner: the larger share of the sensitivity grid near the best"
    else:
        w = _lower_wins(knobs.get(RLHF), knobs.get(DIRECT))
        note = ("winner: fewer method-specific hyperparameters (the sensitivity grid runs in "
                "--preset full)")
    return _row("hyperparameters", sides[RLHF], sides[DIRECT], w, note)


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
            "drop": peak["quality"] - final["quality"], "proxy": proxy_key,
            "proxy_first": proxies[0] if proxies else None,
            "proxy_last": proxies[-1] if proxies else None}


def hacking(results: dict) -> dict:
    sides, drops = {}, {}
    few = next((r["variant"]["pairs"] for r in results["runs"] if r["experiment"] == "hacking"),
               None)  # the share of the pairs the hacking run's reward model had
    for road in (RLHF, DIRECT):
        rep = _rep(results, road) or next(
            (r for r in results["runs"] if r["road"] == road and _trains(results, r)), None)
        runs = [r for r in results["runs"] if rep and r["method"] == rep["method"]
                and r["experiment"] in ("main", "hacking")]
        if road == DIRECT and rep:  # DPO on the same few pairs as the hacking reward model
            runs += [r for r in results["runs"] if r["method"] == rep["method"]
                     and r["experiment"] == "efficiency" and r["variant"]["pairs"] == few]
        found = [c for c in (hacking_curve(r) for r in runs) if c]
        if not found:
            sides[road] = _missing("no evaluation curve")
            continue
        worst = max(found, key=lambda c: c["drop"])
        drops[road] = worst["drop"]
        proxy = "reward-model score" if worst["proxy"] == "proxy" else "implicit reward margin"
        sides[road] = _side(
            f"worst of {len(found)} runs ({worst['experiment']}): {proxy} {f(worst['proxy_first'])} "
            f"-> {f(worst['proxy_last'])} while {results['quality']['metric']} peaked at "
            f"{f(worst['peak'])} (KL {f(worst['kl_at_peak'], 2)}) and ended at "
            f"{f(worst['final'])} (drop {f(worst['drop'])})",
            worst=worst, runs=found, max_drop=worst["drop"])
    w = _lower_wins(drops.get(RLHF), drops.get(DIRECT), 0.02)
    return _row("hacking", sides[RLHF], sides[DIRECT], w,
                "proxy against gold over training; winner: the smaller drop from the peak "
                "(within 0.02: a tie)")


ROWS = (simplicity, memory, stability, efficiency, flexibility, training_time, hyperparameters,
        hacking)


def rows(results: dict) -> list[dict]:
    for run in results["runs"]:
        run["quality_metric"] = results["quality"]["metric"]
    results["memory"] = memory_table(results)
    return [row(results) for row in ROWS]
