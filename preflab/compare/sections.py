"""The report's sections beyond the table: the reward-KL frontier, diversity, sample
completions, and "which should you choose", computed from the results and the user's
constraints (``--gpu-memory``, ``--have``, ``--objective-may-change``)."""

from __future__ import annotations

from preflab.compare.criteria import _quality, _rep, f, frontier_tests, road_settings
from preflab.compare.methods import DIRECT, RLHF

DIVERSITY_KEYS = ("distinct_n/per_input", "distinct_n/across_input", "self_bleu/per_input",
                  "self_bleu/across_input", "ead/per_input", "ead/across_input")


def frontier(results: dict) -> dict:
    """(KL to the SFT policy, quality) at every evaluation of every run, per method, and the
    best quality each method reached within a few KL budgets (the DPO paper's figure 2)."""
    points: dict[str, list] = {}
    for run in results["runs"]:
        if run["experiment"] in ("probe", "flexibility", "pareto"):
            continue
        for e in run["curves"]["eval"]:
            if e["kl"] is not None:
                points.setdefault(run["label"], []).append(
                    [round(e["kl"], 4), round(e["quality"], 4), run["run_dir"], e["step"]])
    budgets = (1.0, 3.0, 10.0)
    best = {label: {f"kl<={b:g}": max((q for kl, q, *_ in pts if kl <= b), default=None)
                    for b in budgets} for label, pts in points.items()}
    # the sweep: each road's scored runs at the base learning rate, by beta or kl_coef, with
    # intervals over seeds; and the test between the roads' best settings at each budget
    by_road = {road: road_settings(results, road, base_lr_only=True) for road in (RLHF, DIRECT)}
    sweep = {road: [{k: v for k, v in s.items() if k != "per_prompt"} for s in settings]
             for road, settings in by_road.items()}
    return {"points": points, "best_within": best, "budgets": list(budgets),
            "sweep": sweep, "tests": frontier_tests(results, budgets, by_road)}


def pareto(results: dict) -> dict:
    """Several objectives: for each road, the (harmlessness, gold) its policy reached when it
    learned gold + w x harmlessness from pairs labelled under it, for each w of the sweep,
    and which of those points no other point of the same road beats on both objectives."""
    weights = results["inputs"].get("pareto_weights") or []
    points: dict[str, list[dict]] = {}
    for run in results["runs"]:
        if run["experiment"] != "pareto" or run["status"] != "done" or "score" not in run:
            continue
        score = run["score"]
        gold, harm = score.get("eval/gold_reward"), score.get("eval/harmlessness")
        if gold is None or harm is None:
            continue
        weight = float(run["variant"]["pairs"][1:])
        points.setdefault(run["label"], []).append(
            {"weight": weight, "gold_reward": gold, "harmlessness": harm,
             "kl": score.get("eval/kl"), "run_dir": run["run_dir"]})
    for pts in points.values():
        pts.sort(key=lambda p: p["weight"])
        for p in pts:
            p["on_front"] = not any(
                q is not p and q["gold_reward"] >= p["gold_reward"]
                and q["harmlessness"] >= p["harmlessness"]
                and (q["gold_reward"], q["harmlessness"]) != (p["gold_reward"], p["harmlessness"])
                for q in pts)
    sft = results["sft"]["score"] or {}
    return {"weights": weights, "points": points,
            "sft": {"gold_reward": sft.get("eval/gold_reward"),
                    "harmlessness": sft.get("eval/harmlessness")}}


def diversity(results: dict) -> dict:
    rows = []
    sft = results["sft"]["score"]
    if sft:
        rows.append({"label": "SFT", "run_dir": None,
                     **{k: sft.get(f"eval/{k}") for k in DIVERSITY_KEYS}})
    for run in results["runs"]:
        if run["experiment"] == "main" and "score" in run:
            rows.append({"label": run["label"], "run_dir": run["run_dir"],
                         **{k: run["score"].get(f"eval/{k}") for k in DIVERSITY_KEYS}})
    return {"rows": rows, "keys": list(DIVERSITY_KEYS)}


def samples(results: dict, n_prompts: int = 4) -> list[dict]:
    """The first completion of each policy on the same held-out prompts."""
    sources = [("SFT", results["sft"].get("examples") or [])]
    sources += [(r["label"], r.get("examples") or []) for r in results["runs"]
                if r["experiment"] == "main"]
    out = []
    for i in range(n_prompts):
        first = next((ex for _, ex in sources if len(ex) > i), None)
        if first is None:
            break
        row = {"prompt": first[i]["prompt"], "completions": {}}
        for label, examples in sources:
            if len(examples) > i:
                ex = examples[i]
                scores = {k: v[0] for k, v in ex.get("scores", {}).items() if v}
                row["completions"][label] = {"text": ex["completions"][0], "scores": scores}
        out.append(row)
    return out


def summary_table(results: dict) -> list[dict]:
    """One line per main run: quality, KL, peak RSS, tensor bytes, wall time."""
    out = []
    sft = results["sft"]["score"] or {}
    q = results["quality"]["metric"]
    if sft:
        out.append({"label": "SFT", "method": "sft", "quality": sft.get(f"eval/{q}"),
                    "kl": sft.get("eval/kl"), "harmlessness": sft.get("eval/harmlessness"),
                    "preference_accuracy": sft.get("eval/preference_accuracy"),
                    "wall_s": results["jobs"].get("sft", {}).get("wall_s"),
                    "total_P": _sft_total_P(results),
                    "run_dir": "runs/sft" if "sft" in results["jobs"] else None})
    mem = {c["method"]: c for c in results["memory"]["configs"]}
    for run in results["runs"]:
        if run["experiment"] != "main":
            continue
        score = run.get("score") or {}
        jobs = [results["jobs"].get(k, {}) for k in run["stages"]]
        rm_accuracy = next((j["final_metrics"]["eval/accuracy"] for j in jobs
                            if "eval/accuracy" in (j.get("final_metrics") or {})), None)
        out.append({"label": run["label"], "method": run["method"], "status": run["status"],
                    "rm_accuracy": rm_accuracy,
                    "quality": score.get(f"eval/{q}"), "kl": score.get("eval/kl"),
                    "kl_is_bound": run.get("best_of", 1) > 1,
                    "harmlessness": score.get("eval/harmlessness"),
                    "preference_accuracy": score.get("eval/preference_accuracy"),
                    "wall_s": sum(j.get("wall_s") or 0 for j in jobs),
                    "total_P": mem.get(run["method"], {}).get("total_P"),
                    "run_dir": run["run_dir"]})
    return out


def _sft_total_P(results: dict) -> float | None:
    roles = results["jobs"].get("sft", {}).get("tensor_bytes") or {}
    P = results["memory"]["P"]
    return sum(r["total"] for r in roles.values()) / P if roles and P else None


def _fits(results: dict) -> dict[str, bool] | None:
    memory = results["constraints"].get("gpu_memory_bytes")
    if not memory:
        return None
    from preflab.algorithms import compared
    from preflab.compare.plan import plan_memory
    from preflab.compare.plan_arch import read_config

    inputs = results["inputs"]
    hyper = inputs.get("hyperparameters", {})
    config = read_config(inputs["sft"])
    seq_len = inputs.get("max_length", 512)
    plans: dict[tuple[int, int], dict] = {}  # one plan per (LoRA rank, micro-batch): every row
    out = {}
    for method, (trainer, entry) in compared().items():
        row = entry.plan or next(iter(trainer.memory), "")
        if not row:
            continue  # a method plan does not count (online DPO): not checked
        h = hyper.get(entry.hyper_section, {})
        shape = (int(h.get("lora_rank", 0)), int(h.get("batch_size", 8)))
        if shape not in plans:
            plans[shape] = plan_memory(config, precision="bf16-mixed", lora_rank=shape[0],
                                       seq_len=seq_len, batch_size=shape[1], gpu_memory=memory)
        figures = plans[shape]["methods"].get(row, {})
        out[method] = bool(figures.get("applicable") and figures.get("fits"))
    return out


def recommendation(results: dict) -> dict:
    """Which method to choose, with the reasons, from the measured rows and the constraints."""
    c = results["constraints"]
    rows = {r["id"]: r for r in results["rows"]}
    q = results["quality"]["metric"]
    scored = [r for r in results["runs"] if r["experiment"] == "main" and "score" in r]
    # A choice is a model to train: best-of-n trains nothing and pays at every answer instead
    untrained = [r for r in scored
                 if not results["stages"].get(r["policy"], {}).get("trains", ["?"])]
    candidates = [r for r in scored if r not in untrained]
    reasons: list[str] = []
    fits = _fits(results)
    if fits is not None:
        dropped = [r["label"] for r in candidates if not fits.get(r["method"], True)]
        candidates = [r for r in candidates if fits.get(r["method"], True)]
        if dropped:
            reasons.append(f"With {c['gpu_memory']} of GPU memory, preflab plan says "
                           f"{', '.join(dropped)} would not fit the compared model in bfloat16 "
                           "at these batch sizes.")
    if not candidates:
        return {"choice": None, "reasons": reasons + ["No compared method finished (and fits)."]}
    best = max(candidates, key=lambda r: _quality(r) or float("-inf"))
    choice = best
    reasons.append(f"Highest measured {q}: {best['label']} ({f(_quality(best))}).")
    prefer_road = None
    if c.get("have") == "prompts":
        eff = rows.get("efficiency")
        points = {road: eff[road]["figures"].get("points") for road in ("rlhf", "dpo")}
        if points["rlhf"] and points["dpo"]:
            smallest = {road: p[0] for road, p in points.items()}
            better = max(smallest, key=lambda road: smallest[road]["gain"])
            reasons.append(f"You have mostly prompts and few labels: on the fewest pairs "
                           f"measured the RLHF road gained {smallest['rlhf']['gain']:+.3f} "
                           f"({smallest['rlhf']['pairs']} pairs) and DPO "
                           f"{smallest['dpo']['gain']:+.3f} ({smallest['dpo']['pairs']} pairs).")
            prefer_road = RLHF if better == "rlhf" else DIRECT
        else:
            reasons.append("You have mostly prompts: the sample-efficiency row was not "
                           "measured in this preset, so this could not be weighed.")
    if c.get("objective_may_change"):
        flex = rows.get("flexibility")
        if flex and flex["winner"] in ("RLHF", "DPO"):
            reasons.append(f"Your objective may change: after a change, "
                           f"{flex['winner']} reached the better new-objective score here "
                           f"({flex['rlhf']['text']} against {flex['dpo']['text']}).")
            prefer_road = RLHF if flex["winner"] == "RLHF" else DIRECT
        else:
            reasons.append("Your objective may change: the flexibility row was not measured in "
                           "this preset, so this could not be weighed.")
    if prefer_road is not None:
        road_runs = [r for r in candidates if r["road"] == prefer_road]
        if road_runs:
            choice = max(road_runs, key=lambda r: _quality(r) or float("-inf"))
    for r in untrained:
        if (_quality(r) or float("-inf")) > (_quality(choice) or float("-inf")):
            reasons.append(f"{r['label']} reached {f(_quality(r))} with no training beyond the "
                           f"reward model, but pays for it at every answer: "
                           f"{r.get('best_of', 1)} samples and reward-model calls each.")
    judged = rows.get("quality")
    if judged and judged["winner"] not in ("RLHF", "DPO", "not measured"):
        reasons.append(f"Between the two roads' policies the difference is "
                       f"{judged['winner']} ({judged['basis']}): the choice above rests on "
                       "the measured means alone.")
    stab = rows.get("stability")
    if stab and stab["winner"] in ("RLHF", "DPO"):
        reasons.append(f"Across seeds, {stab['winner']} was the steadier road here.")
    rep = _rep(results, choice["road"])
    return {"choice": choice["label"], "method": choice["method"], "road": choice["road"],
            "quality": _quality(choice), "reasons": reasons,
            "representative": rep["label"] if rep else None}
