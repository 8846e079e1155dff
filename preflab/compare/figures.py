"""The report's figures, drawn with matplotlib (the article's own tool) from results.json alone.

Each function takes the results dict and a path, draws one PNG and returns True, or returns
False when the results hold nothing to draw (the report then says why, instead of showing an
empty chart):

    memory.png       the article's memory chart, made from measured tensor bytes per role
    frontier.png     quality against KL to the SFT policy at every evaluation (Rafailov et al.)
    hacking.png      proxy (reward-model score, or DPO's implicit margin) and quality over training
    efficiency.png   gain over SFT against the number of labelled pairs
    stability.png    final quality of every seed, per method
    diversity.png    distinct-n and self-BLEU within and across prompts, SFT and each method
    pareto.png       gold against harmlessness for each road across the weights of the sweep
"""

from __future__ import annotations

from pathlib import Path

from preflab.compare.criteria import scale_text

ROLE_COLORS = {"policy": "#3498db", "value": "#2ecc71", "reward": "#e74c3c",
               "reference": "#95a5a6"}
ROAD_COLORS = {"rlhf": "#c0392b", "direct": "#2471a3"}
PALETTE = ["#2471a3", "#c0392b", "#27ae60", "#8e44ad", "#d68910", "#17a589", "#7f8c8d"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 9})
    return plt


def _save(fig, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return True


def _wrap(label: str, width: int = 14) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width))


def memory(results: dict, path: Path) -> bool:
    table = results["memory"]
    configs, P = table["configs"], table["P"]
    if not configs or not P:
        return False
    configs = sorted(configs, key=lambda c: (c["road"] != "rlhf", c["probe"]))  # the article's order
    plt = _plt()
    # about an inch per bar, so that the wrapped labels under the bars never run together
    fig, axes = plt.subplots(1, 2, figsize=(max(12.5, 6 + 1.1 * len(configs)), 4.8),
                             gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    labels = [_wrap(c["label"] + (" *" if c["probe"] else ""), 12) for c in configs]
    bottoms = [0.0] * len(configs)
    for role, color in ROLE_COLORS.items():
        for kind, alpha, hatch in (("params", 1.0, None), ("grads", 0.55, "//"),
                                   ("optimizer", 0.3, "..")):
            heights = [c["roles"].get(role, {}).get(kind, 0) / P for c in configs]
            if not any(heights):
                continue
            ax.bar(range(len(configs)), heights, bottom=bottoms, color=color, alpha=alpha,
                   hatch=hatch, edgecolor="black", linewidth=0.5,
                   label=role if kind == "params" else None)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, c in enumerate(configs):
        ax.text(i, bottoms[i] + 0.15, f"{c['total_P']:.1f}P\n{c['weights_P']:.1f}P weights",
                ha="center", va="bottom", fontsize=7)
    ax.axhline(1, color="gray", linestyle="--", alpha=0.5)
    ax.set_xticks(range(len(configs)), labels, fontsize=7.5)
    ax.set_ylabel("tensor bytes, in P = one model's weights")
    ax.set_ylim(0, max(bottoms) * 1.25)
    ax.set_title("Weights (solid), gradients (//), AdamW states (..) per role", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", title="role", title_fontsize=7)
    ax = axes[1]
    rss = [(c["label"], c["peak_rss_bytes"] / 2**20) for c in configs if c["peak_rss_bytes"]]
    ax.barh([r[0] for r in rss], [r[1] for r in rss], color="#7f8c8d")
    for i, (_, v) in enumerate(rss):
        ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    ax.set_xlabel("MiB")
    ax.set_title("Peak RSS of the process holding the models", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
    return _save(fig, path)


def frontier(results: dict, path: Path) -> bool:
    points = results["frontier"]["points"]
    if not points:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for i, (label, pts) in enumerate(sorted(points.items())):
        color = colors[label] = PALETTE[i % len(PALETTE)]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.35, color=color,
                   label=label)
        envelope, best = [], float("-inf")
        for kl, q, *_ in sorted(pts):
            if q > best:
                best = q
                envelope.append((kl, q))
        ax.plot([e[0] for e in envelope], [e[1] for e in envelope], color=color, linewidth=1.5)
    swept = False
    for settings in (results["frontier"].get("sweep") or {}).values():
        if len(settings) < 2:
            continue
        swept = True
        settings = sorted(settings, key=lambda st: st["kl"]["mean"])

        def err(ci: dict) -> list[float]:
            return [ci["mean"] - ci["low"], ci["high"] - ci["mean"]] if ci["low"] is not None \
                else [0.0, 0.0]

        xs = [st["kl"]["mean"] for st in settings]
        ys = [st["quality"]["mean"] for st in settings]
        xerr = list(zip(*[err(st["kl"]) for st in settings]))
        yerr = list(zip(*[err(st["quality"]) for st in settings]))
        color = colors.get(settings[0]["label"], "black")
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, color=color, marker="D", markersize=6,
                    markeredgecolor="black", linewidth=2, capsize=3,
                    label=f"{settings[0]['label']}: {settings[0]['strength']} sweep "
                          f"(mean, 95% CI over seeds)")
        for st in settings:
            ax.annotate(f"x{scale_text(st['strength_scale'])}",
                        (st["kl"]["mean"], st["quality"]["mean"]),
                        textcoords="offset points", xytext=(5, 5), fontsize=7)
    sft = (results["sft"]["score"] or {}).get(f"eval/{results['quality']['metric']}")
    if sft is not None:
        ax.axhline(sft, color="gray", linestyle=":", label="SFT")
    ax.set_xscale("symlog", linthresh=1.0)  # linear to 1 nat, logarithmic beyond: blow-ups fit
    lowest = min(p[0] for pts in points.values() for p in pts)  # sampled KL can dip below 0
    ax.set_xlim(left=min(-0.1, lowest - 0.05))
    ax.set_xlabel("KL(policy || SFT), nats per completion (sampled; log scale above 1)")
    ax.set_ylabel(results["quality"]["label"])
    ax.set_title("Reward-KL frontier: every evaluation of every run (line: best so far)"
                 + ("; diamonds: the sweep" if swept else ""), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def hacking(results: dict, path: Path) -> bool:
    def shown(r: dict) -> bool:  # the main runs, and both roads under the same pressure
        trains = results["stages"].get(r["policy"], {}).get("trains")  # best-of-n: nothing
        return bool(trains) and len(r["curves"]["eval"]) >= 2 and (
            r["experiment"] in ("main", "hacking"))

    runs = [r for r in results["runs"] if shown(r)]
    if not runs:
        return False
    plt = _plt()
    rlhf = [r for r in runs if r["road"] == "rlhf" and r["method"] == "ppo"] or [
        r for r in runs if r["road"] == "rlhf"]
    direct = [r for r in runs if r["road"] == "direct" and r["method"] == "dpo"] or [
        r for r in runs if r["road"] == "direct"][:2]
    panels = [p for p in ((rlhf, "proxy", "reward-model score (proxy)"),
                          (direct, "margin", "implicit reward margin (DPO's proxy)")) if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (group, key, ylabel) in zip(axes[0], panels):
        twin = ax.twinx()
        for i, r in enumerate(group):
            color = PALETTE[i % len(PALETTE)]
            steps = [e["step"] for e in r["curves"]["eval"]]
            ax.plot(steps, [e["quality"] for e in r["curves"]["eval"]], color=color,
                    label=f"{r['label']} [{_experiment(r)}]: {results['quality']['metric']}")
            proxy = [(e["step"], e[key]) for e in r["curves"]["eval"] if e[key] is not None]
            if not proxy and key == "margin":
                proxy = [(t["step"], t["margin"]) for t in r["curves"]["train"]
                         if t["margin"] is not None]
            if proxy:
                twin.plot([p[0] for p in proxy], [p[1] for p in proxy], color=color,
                          linestyle="--", alpha=0.8, label=f"{r['label']}: proxy")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{results['quality']['label']} (solid)")
        twin.set_ylabel(f"{ylabel} (dashed)")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Proxy against gold over training")
    return _save(fig, path)


def _experiment(run: dict) -> str:
    pairs = run["variant"].get("pairs", "all")
    seed = run["variant"].get("seed", 0)
    return (run["experiment"] + ("" if pairs == "all" else f", {pairs} of the pairs")
            + (f", seed {seed}" if seed else ""))


def efficiency(results: dict, path: Path) -> bool:
    row = next((r for r in results["rows"] if r["id"] == "efficiency"), None)
    series = [(side, row[side]["figures"].get("points")) for side in ("rlhf", "dpo")] if row else []
    series = [(s, p) for s, p in series if p]
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for side, pts in series:
        ax.plot([p["pairs"] for p in pts], [p["gain"] for p in pts], marker="o",
                color=ROAD_COLORS["rlhf" if side == "rlhf" else "direct"],
                label="RLHF (reward model on the pairs, then PPO)" if side == "rlhf" else "DPO")
    ax.set_xscale("log", base=2)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("labelled preference pairs")
    ax.set_ylabel(f"gain in {results['quality']['metric']} over SFT")
    ax.set_title("Sample efficiency")
    ax.legend(fontsize=8)
    return _save(fig, path)


def stability(results: dict, path: Path) -> bool:
    q = f"eval/{results['quality']['metric']}"
    by: dict[str, list[float]] = {}
    for r in results["runs"]:
        if r["experiment"] in ("main", "seed") and "score" in r and q in r["score"]:
            by.setdefault(r["label"], []).append(r["score"][q])
    by = {k: v for k, v in by.items() if len(v) >= 2}
    if not by:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, values in enumerate(by.values()):
        ax.scatter([i] * len(values), values, color=PALETTE[i % len(PALETTE)], zorder=3)
        mean = sum(values) / len(values)
        ax.hlines(mean, i - 0.25, i + 0.25, color="black")
    ax.set_xticks(range(len(by)), list(by), fontsize=8)
    ax.set_ylabel(results["quality"]["label"])
    ax.set_title("Final score of each seed (bar: mean)")
    return _save(fig, path)


def diversity(results: dict, path: Path) -> bool:
    rows = results["diversity"]["rows"]
    if not rows:
        return False
    plt = _plt()
    keys = [k for k in ("distinct_n/per_input", "distinct_n/across_input",
                        "self_bleu/per_input", "self_bleu/across_input")
            if any(r.get(k) is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        ax.bar([k + i * width for k in range(len(keys))], [r.get(k) or 0 for k in keys],
               width=width, label=r["label"], color=PALETTE[i % len(PALETTE)])
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))],
                  [k.replace("/", "\n") for k in keys], fontsize=8)
    ax.set_title("Diversity (distinct-n: higher is more varied; self-BLEU: lower is)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def pareto(results: dict, path: Path) -> bool:
    data = results.get("pareto") or {}
    points = data.get("points") or {}
    if not points:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, pts) in enumerate(sorted(points.items())):
        color = PALETTE[i % len(PALETTE)]
        xs, ys = [p["harmlessness"] for p in pts], [p["gold_reward"] for p in pts]
        ax.plot(xs, ys, "o-", color=color, label=label, alpha=0.9)
        for p in pts:
            ax.annotate(f"w={p['weight']:g}", (p["harmlessness"], p["gold_reward"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3), color=color)
    sft = data.get("sft") or {}
    if sft.get("gold_reward") is not None and sft.get("harmlessness") is not None:
        ax.scatter([sft["harmlessness"]], [sft["gold_reward"]], marker="*", s=120,
                   color="gray", label="SFT", zorder=3)
    ax.set_xlabel("harmlessness (held-out, higher is better)")
    ax.set_ylabel("gold reward (helpfulness)")
    ax.set_title("Several objectives: each road trained on gold + w x harmlessness labels")
    ax.legend(fontsize=8)
    return _save(fig, path)


FIGURES = {"memory": memory, "frontier": frontier, "hacking": hacking,
           "efficiency": efficiency, "stability": stability, "diversity": diversity,
           "pareto": pareto}


def draw_all(results: dict, out_dir: Path) -> dict[str, str]:
    """Draw every figure that has data; ``{name: path relative to the comparison}``."""
    drawn = {}
    for name, fn in FIGURES.items():
        path = out_dir / "figures" / f"{name}.png"
        if fn(results, path):
            drawn[name] = f"figures/{name}.png"
        elif path.exists():
            path.unlink()
    return drawn
