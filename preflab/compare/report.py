"""The comparison's report: report.md, report.html and figures/, rendered from results.json alone.

``render(cmp_dir)`` reads ``CMP/results.json``, draws the figures (``preflab.compare.figures``)
and writes ``report.md`` and ``report.html``. The HTML is one self-contained file: the CSS is
inline and every figure is embedded as a base64 PNG, so it opens from disk with no network.
Every figure in the table is a number stored in results.json beside the run it came from.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from preflab.compare.criteria import NO_DIFFERENCE, UNTESTED, scale_text
from preflab.compare.methods import DIRECT, RLHF
from preflab.errors import DataError

CAPTIONS = {
    "memory": "The article's memory chart, measured: tensor bytes per role in units of P (one "
              "model's weights), and the peak RSS of the process holding each method's models (its "
              "last stage; the reward model trains in a process of its own). * a short run kept "
              "only for its memory figures.",
    "frontier": "Reward-KL frontier: quality against the sampled KL to the SFT policy at every "
                "evaluation of every run (the DPO paper's figure 2). Best-of-n has one point "
                "per n, at its KL bound log n - (n-1)/n (Gao et al. 2023's figure 1). "
                "Diamonds: the sweep over beta (DPO) and kl_coef (PPO), each setting's held-out "
                "score as a mean with 95% intervals over seeds in both directions.",
    "hacking": "Proxy against gold over training: PPO's reward-model score and DPO's implicit "
               "reward margin (dashed), each next to the quality measure (solid): the main "
               "runs, and each road under the same pressure (the same few pairs, beta or "
               "kl_coef 50x smaller, twice the steps), every seed.",
    "efficiency": "Gain over SFT against the number of labelled pairs.",
    "stability": "Final score of every seed.",
    "diversity": "Diversity of SFT and each method, within a prompt (per input) and across "
                 "prompts (Kirk et al. 2024).",
    "pareto": "Several objectives: each road learned gold + w x harmlessness from the pairs "
              "labelled again under it, for each weight w; one point per trained policy.",
}
MARK = {True: "agrees", False: "DISAGREES", None: "-"}


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _article_rows(results: dict) -> list[dict]:
    return [r for r in results["rows"] if r.get("in_article", True)]


def headline(results: dict) -> str:
    """The verdicts counted: named winners (tested where sampled), no difference, untested."""
    rows = _article_rows(results)
    alpha = results["settings"].get("alpha", 0.05)
    count = {w: sum(r["winner"] == w for r in rows) for w in
             ("DPO", "RLHF", NO_DIFFERENCE, UNTESTED, "not measured", "tie")}
    agree = sum(r["agrees"] is True for r in rows)
    parts = [f"DPO wins {count['DPO']} and RLHF {count['RLHF']} of the article's {len(rows)} "
             "rows"]
    if count[NO_DIFFERENCE]:
        parts.append(f"{count[NO_DIFFERENCE]} show no significant difference")
    if count[UNTESTED]:
        parts.append(f"{count[UNTESTED]} rest on one run per road and name no winner")
    if count["tie"]:
        parts.append(f"{count['tie']} tie")
    if count["not measured"]:
        parts.append(f"{count['not measured']} were not measured")
    disagree = sum(r["agrees"] is False for r in rows)
    text = (f"Measured (tests at alpha {alpha:g}): " + ", ".join(parts)
            + f" (the article: DPO 7 of 8); the measurement agrees with the article on {agree} "
            f"rows, contradicts it on {disagree} and decides nothing on "
            f"{len(rows) - agree - disagree}.")
    sentence = quality_sentence(results)
    if sentence:
        text += " " + sentence
    summary = results.get("summary") or []
    sft = next((s["quality"] for s in summary if s["method"] == "sft"), None)
    gains = [f"{s['label']} {s['quality'] - sft:+.3f}" for s in summary
             if s["method"] != "sft" and s.get("quality") is not None and sft is not None]
    if gains:
        text += (f" Every main run's {results['quality']['metric']} over SFT ({sft:.3f}), "
                 "seed 0: " + ", ".join(gains) + ".")
    return text


def quality_sentence(results: dict) -> str:
    """Which road made the better policy, at what KL, and what the verdict rests on."""
    row = next((r for r in results["rows"] if r["id"] == "quality"), None)
    if row is None or row["winner"] == "not measured":
        return ""
    fr, fd = row["rlhf"]["figures"], row["dpo"]["figures"]
    bound = results["settings"].get("kl_bound", 10.0)

    def said(fig: dict) -> str:
        gain = fig["gain"]
        interval = (f" [{gain['low']:+.3f}, {gain['high']:+.3f}]" if gain["low"] is not None
                    else "")
        return f"{gain['mean']:+.3f}{interval} at KL {fig['kl']['mean']:.2f}"

    metric = results["quality"]["metric"]
    rests = f"best setting within KL {bound:g}, {row['basis']}"
    test = row.get("test") or {}
    if test.get("p") is not None and test["name"].startswith("Welch"):
        raw = test.get("p_unadjusted")
        rests += (f"; Welch t, p = {raw:.2g}, {test['p']:.2g} after Bonferroni for picking the "
                  "best settings" if raw is not None and raw != test["p"]
                  else f"; Welch t, p = {test['p']:.2g}")
    name = {"RLHF": fr.get("label", "the RLHF road"), "DPO": fd.get("label", "DPO")}
    if row["winner"] in ("RLHF", "DPO"):
        better, worse = ("RLHF", "DPO") if row["winner"] == "RLHF" else ("DPO", "RLHF")
        figs = {"RLHF": fr, "DPO": fd}
        return (f"Alignment quality (not in the article): {name[better]} made the better policy "
                f"on this task, {metric} {said(figs[better])} over SFT against "
                f"{name[worse]}'s {said(figs[worse])} ({rests}).")
    if row["winner"] == NO_DIFFERENCE:
        return (f"Alignment quality (not in the article): neither road made a significantly "
                f"better policy on this task; {metric} over SFT, {name['RLHF']} {said(fr)}, "
                f"{name['DPO']} {said(fd)} ({rests}).")
    if fr and fd:
        return (f"Alignment quality (not in the article), one run per road, so no winner: "
                f"{metric} over SFT, {name['RLHF']} {said(fr)}, {name['DPO']} {said(fd)} "
                f"({rests}).")
    return ""


def _basis(row: dict) -> str:
    return row.get("basis") or "-"


def table_md(results: dict) -> list[str]:
    lines = ["| Criterion | RLHF (measured) | DPO (measured) | Winner (measured) | Rests on | "
             "Article: RLHF / DPO, winner | Agrees? |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        a = r["article"]
        article = (f"{a['rlhf']} / {a['dpo']}, {a['winner']}" if r.get("in_article", True)
                   else "not in the article")
        lines.append(f"| {r['criterion']} | {_cell(r['rlhf']['text'])} | "
                     f"{_cell(r['dpo']['text'])} | **{r['winner']}** | {_cell(_basis(r))} | "
                     f"{article} | {MARK[r['agrees']]} |")
    return lines


def table_short(results: dict) -> list[str]:
    """The table with one-line cells (README's first screen); the report has the details."""
    lines = ["| Criterion | RLHF | DPO | Winner | Rests on | Article | Agrees? |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        a = r["article"]
        lines.append(f"| {r['criterion']} | {_cell(r['rlhf'].get('short', r['rlhf']['text']))} "
                     f"| {_cell(r['dpo'].get('short', r['dpo']['text']))} | **{r['winner']}** "
                     f"| {_cell(_basis(r))} | {a['winner'] if r.get('in_article', True) else '-'}"
                     f" | {MARK[r['agrees']]} |")
    return lines


def _intro(results: dict) -> str:
    m = results["machine"]
    where = ("the built-in world (a synthetic review task with a hidden gold reward)"
             if results["mode"] == "world" else "your model and data")
    proxy = ""
    if results["quality"]["proxy"]:
        proxy = (" Quality here is the score of a judge reward model trained on a held-out "
                 "share of your pairs that no compared run saw, plus held-out preference "
                 "accuracy: **a proxy, not a ground truth**. Pass --gold-reward if you have a "
                 "better one.")
    return (f"Both roads on {where}, every method from the same SFT checkpoint, each run a "
            f"fresh process (preset `{results['preset']}`, {results['created']}, "
            f"{m['cpu_cores']} CPU cores, {m.get('cuda') or 'no GPU'}, torch {m['torch']}, "
            f"preflab {results['preflab_version']}).{proxy}")


def runs_table(results: dict) -> list[str]:
    """One line per main run (seed 0): quality, KL, accuracy, memory, wall time, directory."""
    q = results["quality"]
    lines = [f"| method | status | {q['metric']} | KL to SFT | harmlessness | reward model's "
             "held-out accuracy | tensor bytes | wall s | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in results["summary"]:
        kl = f"≤ {_f(s['kl'], 2)} (bound)" if s.get("kl_is_bound") else _f(s["kl"], 2)
        lines.append(f"| {s['label']} | {s.get('status', 'done')} | {_f(s['quality'])} | "
                     f"{kl} | {_f(s.get('harmlessness'))} | "
                     f"{_f(s.get('rm_accuracy'))} | {_f(s.get('total_P'), 1)}P | "
                     f"{_f(s.get('wall_s'), 0)} | `{s.get('run_dir') or '-'}` |")
    return lines


def markdown(results: dict) -> str:
    lines = ["# DPO against RLHF, measured", "", _intro(results), "",
             "## The article's table, measured", "", *table_md(results), "", headline(results),
             ""]
    rec = results["recommendation"]
    lines += ["## Which should you choose", ""]
    if rec.get("choice"):
        lines.append(f"**{rec['choice']}**, from what was measured here and your constraints:")
    lines += ["", *[f"- {reason}" for reason in rec.get("reasons", [])], ""]
    lines += ["## The runs", "", *runs_table(results), ""]
    for name, title in (("memory", "Memory"), ("frontier", "Reward-KL frontier"),
                        ("hacking", "Reward hacking"), ("efficiency", "Sample efficiency"),
                        ("stability", "Stability over seeds"), ("diversity", "Diversity"),
                        *((("pareto", "Several objectives"),) if _has_pareto(results) else ())):
        lines += [f"## {title}", ""]
        if name in results["figures"]:
            lines += [f"![{title}]({results['figures'][name]})", "", CAPTIONS[name], ""]
        else:
            lines += ["Not measured in this run.", ""]
        lines += _section_md(results, name)
    lines += ["## Sample completions", ""]
    for s in results["samples"]:
        lines += [f"**Prompt:** `{s['prompt']}`", ""]
        lines += [f"- {label}: `{c['text'].strip()}` ({_scores(c['scores'])})"
                  for label, c in s["completions"].items()]
        lines.append("")
    if results["failed"]:
        lines += ["## Runs that did not finish", "", "| job | status | error | log |",
                  "|---|---|---|---|"]
        for job in results["failed"]:
            err = _cell(job["error"].strip().splitlines()[-1] if job["error"] else "")[:160]
            lines.append(f"| {job['key']} | {job['status']} | {err} | `{job['log']}` |")
        lines.append("")
    lines += ["## How each row was measured", ""]
    lines += [f"- **{r['criterion']}**: {r['note']}" for r in results["rows"] if r["note"]]
    lines += ["", "Every number above is in `results.json`, with the run directory it came "
              "from; `preflab report` renders this page again from it.", ""]
    return "\n".join(lines)


def _has_pareto(results: dict) -> bool:
    return bool((results.get("pareto") or {}).get("weights"))


def _scores(scores: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in scores.items()) or "-"


def _section_md(results: dict, name: str) -> list[str]:
    if name == "memory":
        m = results["memory"]
        out = ["| configuration | policy | value | reward | reference | total | weights | "
               "peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
        for c in m["configs"]:
            role = {k: _f(c["roles"].get(k, {}).get("total", 0) / m["P"], 2) if m["P"] else "n/a"
                    for k in ("policy", "value", "reward", "reference")}
            out.append(f"| {c['label']}{' *' if c['probe'] else ''} | {role['policy']}P | "
                       f"{role['value']}P | {role['reward']}P | {role['reference']}P | "
                       f"{_f(c['total_P'], 2)}P | {_f(c['weights_P'], 2)}P | "
                       f"{_f((c['peak_rss_bytes'] or 0) / 2**20, 0)} |")
        out += ["", f"P = {_f((m['P'] or 0) / 2**20, 2)} MiB.", ""]
        ratios = m.get("ratios") or {}
        columns = sorted({d for r in ratios.values() for d in r})
        if ratios and columns:
            label = {c["method"]: c["label"] for c in m["configs"]}
            out += ["| tensor bytes, RLHF / direct | " + " | ".join(label[d] for d in columns)
                    + " |", "|---" * (len(columns) + 1) + "|"]
            out += [f"| {label[r]} | " + " | ".join(f"{ratios[r][d]:.2f}x" if d in ratios[r]
                                                     else "n/a" for d in columns) + " |"
                    for r in ratios]
            out.append("")
        return out
    if name == "frontier":
        fr = results["frontier"]
        heads = [f"best within KL <= {b:g}" for b in fr["budgets"]]
        out = ["| method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for label, best in fr["best_within"].items():
            out.append(f"| {label} | " + " | ".join(_f(v) for v in best.values()) + " |")
        out += ["", "(the best single evaluation of any run: a maximum over noisy points, "
                "read with the tests below)", ""]
        return out + _sweep_md(results)
    if name == "pareto":
        p = results["pareto"]
        out = ["| method | w | gold reward | harmlessness | KL to SFT | on its road's front | run |",
               "|---|---|---|---|---|---|---|"]
        for label, pts in sorted(p["points"].items()):
            out += [f"| {label} | {q['weight']:g} | {_f(q['gold_reward'])} | "
                    f"{_f(q['harmlessness'])} | {_f(q['kl'], 2)} | "
                    f"{'yes' if q['on_front'] else 'no'} | `{q['run_dir']}` |" for q in pts]
        sft = p.get("sft") or {}
        out += ["", f"SFT: gold reward {_f(sft.get('gold_reward'))}, harmlessness "
                f"{_f(sft.get('harmlessness'))}.", ""]
        return out
    if name == "diversity":
        d = results["diversity"]
        out = ["| policy | " + " | ".join(d["keys"]) + " |", "|---" * (len(d["keys"]) + 1) + "|"]
        out += [f"| {r['label']} | " + " | ".join(_f(r.get(k)) for k in d["keys"]) + " |"
                for r in d["rows"]]
        return out + [""]
    return []


def _interval(ci: dict, digits: int = 3, sign: bool = False) -> str:
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    if ci.get("low") is None:
        return fmt.format(ci["mean"])
    return f"{fmt.format(ci['mean'])} [{fmt.format(ci['low'])}, {fmt.format(ci['high'])}]"


def _sweep_md(results: dict) -> list[str]:
    """The frontier as a sweep: each setting with intervals, and the tests at each budget."""
    fr = results["frontier"]
    sweep, tests = fr.get("sweep") or {}, fr.get("tests") or []
    if not any(sweep.values()):
        return []
    q = results["quality"]["metric"]
    out = ["The sweep: each road's runs at its base learning rate, by beta (DPO) or kl_coef "
           "(PPO), scored on the held-out prompts (mean [95% CI, t over seeds]):", "",
           f"| method | setting | seeds | {q} | KL to SFT | runs |", "|---|---|---|---|---|---|"]
    for settings in sweep.values():
        for st in settings:
            out.append(f"| {st['label']} | {st['strength']} x{scale_text(st['strength_scale'])} | "
                       f"{st['n']} | {_interval(st['quality'])} | {_interval(st['kl'], 2)} | "
                       + ", ".join(f"`{d}`" for d in st["run_dirs"]) + " |")
    out += ["", f"At each KL budget, each road's best setting whose mean KL is within it (among "
            f"the settings with the most seeds), and the test between the two (alpha "
            f"{results['settings'].get('alpha', 0.05):g}):", "",
            "| KL budget | RLHF: gain over SFT, KL | DPO: gain over SFT, KL | test | verdict |",
            "|---|---|---|---|---|"]
    for t in tests:
        cells = []
        for road in (RLHF, DIRECT):
            e = t.get(road)
            cells.append(f"{_interval(e['gain'], sign=True)} at {e['kl']['mean']:.2f} "
                         f"(x{scale_text(e['strength_scale'])}, {e['n']} seeds)" if e
                         else "none within")
        test = t.get("test")
        said = (f"{'Welch t' if t.get('over_seeds') else 'paired t over prompts'}, p = "
                f"{test['p']:.3g}" if test and test.get("p") is not None else "-")
        out.append(f"| {t['kl_bound']:g} | {cells[0]} | {cells[1]} | {said} | "
                   f"{t['winner']} |")
    return out + [""]


# --- HTML ----------------------------------------------------------------------------------------
CSS = """
body{font:15px/1.5 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1c2833;
max-width:1180px;margin:2em auto;padding:0 1.2em;background:#fdfefe}
h1{font-size:1.8em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:2px solid #d6dbdf;
padding-bottom:.2em}table{border-collapse:collapse;width:100%;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d6dbdf;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#eaf2f8}tr:nth-child(even) td{background:#f8f9f9}
td.win{font-weight:600;white-space:nowrap}td.yes{color:#1e8449}td.no{color:#c0392b;font-weight:600}
.lead{font-size:1.05em;color:#34495e}.headline{background:#eaf2f8;border-left:4px solid #2471a3;
padding:.6em 1em}.choice{background:#e9f7ef;border-left:4px solid #1e8449;padding:.6em 1em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eaecee}
figcaption{font-size:.85em;color:#566573}code{background:#f4f6f6;padding:0 .25em}
.small{font-size:.85em;color:#566573}
"""


def _esc(text) -> str:
    return html.escape(str(text))


def _table_html(head: list[str], rows: list[list[str]], classes: list[list[str]] | None = None):
    out = ["<table><thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr></thead>"
           "<tbody>"]
    for i, row in enumerate(rows):
        cls = classes[i] if classes else [""] * len(row)
        out.append("<tr>" + "".join(f'<td class="{c}">{cell}</td>' if c else f"<td>{cell}</td>"
                                    for cell, c in zip(row, cls)) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _md_table_to_html(lines: list[str]) -> str:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines
            if line.startswith("|") and not line.startswith("|---")]
    if not rows:
        return ""
    return _table_html(rows[0], [[_inline(c) for c in r] for r in rows[1:]])


def _md_to_html(lines: list[str]) -> str:
    """Markdown lines of tables and paragraphs (what ``_section_md`` writes) as HTML."""
    out, table, paragraph = [], [], []

    def flush() -> None:
        if table:
            out.append(_md_table_to_html(table))
            table.clear()
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    for line in lines:
        if line.startswith("|"):
            if paragraph:
                flush()
            table.append(line)
        elif line.strip():
            if table:
                flush()
            paragraph.append(line.strip())
        else:
            flush()
    flush()
    return "".join(out)


def _inline(cell: str) -> str:
    """A markdown cell as HTML: escaped, with `code` spans."""
    parts = _esc(cell).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def html_report(results: dict, root: Path) -> str:
    parts = [f"<h1>DPO against RLHF, measured</h1><p class='lead'>{_esc(_intro(results))}</p>",
             "<h2>The article's table, measured</h2>"]
    rows, classes = [], []
    for r in results["rows"]:
        a = r["article"]
        article = (f"{a['rlhf']} / {a['dpo']}; {a['winner']}" if r.get("in_article", True)
                   else "not in the article")
        rows.append([_esc(r["criterion"]), _esc(r["rlhf"]["text"]), _esc(r["dpo"]["text"]),
                     _esc(r["winner"]), _esc(_basis(r)), _esc(article),
                     _esc(MARK[r["agrees"]])])
        classes.append(["", "", "", "win", "", "",
                        {True: "yes", False: "no"}.get(r["agrees"], "")])
    parts.append(_table_html(["Criterion", "RLHF (measured)", "DPO (measured)",
                              "Winner (measured)", "Rests on", "Article: RLHF / DPO; winner",
                              "Agrees?"], rows, classes))
    parts.append(f"<p class='headline'>{_esc(headline(results))}</p>")
    rec = results["recommendation"]
    parts.append("<h2>Which should you choose</h2><div class='choice'>")
    if rec.get("choice"):
        parts.append(f"<p><strong>{_esc(rec['choice'])}</strong>, from what was measured "
                     "here and your constraints:</p>")
    parts.append("<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in rec.get("reasons", []))
                 + "</ul></div>")
    md = markdown(results).splitlines()

    def block(title: str) -> list[str]:
        start = md.index(f"## {title}") + 1
        end = next((i for i in range(start, len(md)) if md[i].startswith("## ")), len(md))
        return md[start:end]

    parts.append("<h2>The runs</h2>" + _md_table_to_html(block("The runs")))
    for name, title in (("memory", "Memory"), ("frontier", "Reward-KL frontier"),
                        ("hacking", "Reward hacking"), ("efficiency", "Sample efficiency"),
                        ("stability", "Stability over seeds"), ("diversity", "Diversity"),
                        *((("pareto", "Several objectives"),) if _has_pareto(results) else ())):
        parts.append(f"<h2>{title}</h2>")
        if name in results["figures"]:
            data = base64.b64encode((root / results["figures"][name]).read_bytes()).decode()
            parts.append(f"<figure><img alt='{_esc(title)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{_esc(CAPTIONS[name])}</figcaption></figure>")
        else:
            parts.append("<p class='small'>Not measured in this run.</p>")
        parts.append(_md_to_html(_section_md(results, name)))
    parts.append("<h2>Sample completions</h2>")
    for s in results["samples"]:
        parts.append(f"<p><strong>Prompt:</strong> <code>{_esc(s['prompt'])}</code></p>")
        parts.append(_table_html(["policy", "completion", "scores"], [
            [_esc(label), f"<code>{_esc(c['text'].strip())}</code>", _esc(_scores(c["scores"]))]
            for label, c in s["completions"].items()]))
    if results["failed"]:
        parts.append("<h2>Runs that did not finish</h2>")
        parts.append(_table_html(["job", "status", "error", "log"], [
            [_esc(j["key"]), _esc(j["status"]), f"<pre>{_esc(j['error'][-600:])}</pre>",
             f"<code>{_esc(j['log'])}</code>"] for j in results["failed"]]))
    parts.append("<h2>How each row was measured</h2><ul>" + "".join(
        f"<li><strong>{_esc(r['criterion'])}</strong>: {_esc(r['note'])}</li>"
        for r in results["rows"] if r["note"]) + "</ul>")
    parts.append("<p class='small'>Every number on this page is in results.json, with the run "
                 "directory it came from; <code>preflab report</code> renders it again.</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            "content='width=device-width, initial-scale=1'><title>DPO against RLHF, measured"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def render(root: str | Path) -> dict[str, Path]:
    """Figures, report.md and report.html from ``root/results.json``."""
    from preflab.compare.figures import draw_all

    root = Path(root)
    path = root / "results.json"
    if not path.is_file():
        raise DataError("no results.json here: run `preflab compare` first", path=str(path))
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the results: {exc}", path=str(path)) from None
    results["figures"] = draw_all(results, root)
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (root / "report.md").write_text(markdown(results), encoding="utf-8")
    (root / "report.html").write_text(html_report(results, root), encoding="utf-8")
    return {"results": path, "markdown": root / "report.md", "html": root / "report.html"}
