"""The numbers in README.md and docs/ that come from a comparison, written from the comparisons
kept in the repository (``docs/results/<source>/results.json``), or checked against them.

    python scripts/docs_results.py           # derive each kept comparison's rows again with the
                                             # current criteria, render its report, and rewrite
                                             # every generated part of the docs
    python scripts/docs_results.py --check   # change nothing; name every part that disagrees

A generated part is marked in the Markdown, so it reads as ordinary text:

    <!-- results SOURCE KIND -->
    ...a table or a paragraph...
    <!-- /results -->

    in a sentence, <!-- r SOURCE NAME -->0.428<!-- /r --> (one value)

SOURCE is a directory under docs/results/ (``full``: ``preflab compare --preset full``;
``demo``: ``make demo``; ``real-cpu``: ``make demo-real``; ``registry``: the quick preset with
the methods added to prove the registry, CPO and REINFORCE++, beside DPO and PPO). KIND is a key of ``BLOCKS``
below; NAME a key of ``VALUES`` or a path into results.json with a format (``lookup``). ``tests/test_docs_results.py`` runs ``--check``, so a number
edited by hand, or a kept comparison replaced without regenerating the docs, fails the tests.
A kept comparison's report renders again with ``preflab report docs/results/SOURCE``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from preflab.compare import report
from preflab.compare.run import derive

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
DOCS = ("README.md", "docs/*.md", "docs/algorithms/*.md")

BLOCK = re.compile(r"(<!-- results (?P<source>[\w-]+) (?P<kind>[\w-]+) -->\n)(?P<body>.*?)"
                   r"(<!-- /results -->)", re.S)
VALUE = re.compile(r"(<!-- r (?P<source>[\w-]+) (?P<name>[\w.:+=/@-]+) -->)(?P<body>.*?)"
                   r"(<!-- /r -->)")


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s"


def _millions(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f}M"


def _row(results: dict, key: str) -> dict:
    return next(r for r in results["rows"] if r["id"] == key)


def _seeds(results: dict) -> str:
    """How many seeds the seeded rows rest on (e.g. "3"), from the stability row."""
    figures = _row(results, "stability")["rlhf"]["figures"]
    return str(figures.get("seeds", 1))


def _jobs(results: dict) -> list[str]:
    """Every process of the comparison: its wall time and peak RSS (``jobs.json``)."""
    lines = ["| job | command | wall s | peak RSS MiB |", "|---|---|---|---|"]
    for key, job in results["jobs"].items():
        rss = job.get("peak_rss_bytes") or job.get("process_peak_rss_bytes")
        words = [w for w in job["command"][:3] if not w.startswith("/")]
        lines.append(f"| {key} | `{' '.join(words)}` | {job['wall_s'] or 0:,.0f} | "
                     f"{(rss or 0) / 2**20:,.0f} |")
    return lines


def _config(results: dict, method: str) -> dict:
    return next(c for c in results["memory"]["configs"] if c["method"] == method)


def _beyond(results: dict, method: str) -> str:
    """How much more than its tensors a method's process held at its peak, in GiB."""
    c = _config(results, method)
    return f"{(c['peak_rss_bytes'] - c['total']) / 2**30:.1f} GiB"


def _rss_ratio(results: dict, methods: str) -> str:
    a, b = methods.split("/")
    return f"{_config(results, a)['peak_rss_bytes'] / _config(results, b)['peak_rss_bytes']:.2f}x"


def _notes(results: dict) -> list[str]:
    """Each row's verdict, what it rests on, and how it was reached (its test)."""
    return [f"- **{r['criterion']}**: {r['winner']} ({r.get('basis') or '-'}). "
            f"{r['note'][:1].upper()}{r['note'][1:]}." for r in results["rows"]]


BLOCKS: dict[str, Callable[[dict], list[str]]] = {
    "jobs": _jobs,
    "notes": _notes,
    "table": report.table_md,
    "table-short": report.table_short,
    "headline": lambda r: [report.headline(r)],
    "quality": lambda r: [report.quality_sentence(r)],
    "sweep": report._sweep_md,
    "runs": report.runs_table,
    "memory": lambda r: report._section_md(r, "memory"),
    "pareto": lambda r: report._section_md(r, "pareto"),
}
VALUES: dict[str, Callable[[dict], str]] = {
    "jobs": lambda r: str(len(r["jobs"])),
    "span": lambda r: _minutes(r.get("span_s")),
    "params": lambda r: _millions(r["model"]["params"]),
    "vocab": lambda r: f"{r['model']['vocab_size']:,}",
    "sft": lambda r: f"{r['sft']['score']['eval/' + r['quality']['metric']]:.3f}",
    "seeds": _seeds,
    "knobs-rlhf": lambda r: str(_row(r, "hyperparameters")["rlhf"]["figures"]["method_specific"]),
    "knobs-dpo": lambda r: str(_row(r, "hyperparameters")["dpo"]["figures"]["method_specific"]),
}


def lookup(results: dict, name: str) -> str:
    """A value by name: a key of ``VALUES``, ``FUNCTION=ARGUMENT`` (``FUNCTIONS``), or a path
    into results.json with a format,
    ``rows.memory.rlhf.figures.weights_P:.1f`` (a list is indexed by its items' ``id``,
    ``method`` or ``label``, or by position; formats: any of Python's, ``gib``, ``mib``)."""
    if name in VALUES:
        return VALUES[name](results)
    function, _, argument = name.partition("=")
    if function in FUNCTIONS:
        return FUNCTIONS[function](results, argument)
    path, _, spec = name.partition(":")
    value = results
    for key in path.split("."):
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, dict) and key in (
                v.get("id"), v.get("method"), v.get("label"))), None) or value[int(key)]
        else:
            value = value[key]
    if spec == "gib":
        return f"{value / 2**30:.1f} GiB"
    if spec == "mib":
        return f"{value / 2**20:.1f} MiB"
    return format(value, spec)


def _best_within(results: dict, argument: str) -> str:
    """best-within=ppo@10: the best quality any evaluation of the method reached within KL 10
    (the report's frontier table)."""
    method, _, bound = argument.partition("@")
    label = next(r["label"] for r in results["runs"] if r["method"] == method)
    return f"{results['frontier']['best_within'][label][f'kl<={float(bound):g}']:.3f}"


def _diversity(results: dict, argument: str) -> str:
    """diversity=ppo@distinct_n/per_input: a main run's (or sft's) diversity figure."""
    method, _, key = argument.partition("@")
    row = next(r for r in results["diversity"]["rows"]
               if (r["run_dir"] or "runs/sft-s0") == f"runs/{method}-s0")
    return f"{row[key]:.3f}"


def _gain(results: dict, method: str) -> str:
    """gain=cpo: a main run's quality over SFT's with its 95% t interval over the held-out
    prompts (paired by prompt), as the report gives the quality row's: ``+0.064 [+0.039,
    +0.089]``."""
    from preflab.compare.stats import mean_ci

    metric = results["quality"]["metric"]
    run = next(r for r in results["runs"] if r["method"] == method and r["experiment"] == "main")
    sft = results["sft"]["per_prompt"][metric]
    ci = mean_ci([a - b for a, b in zip(run["per_prompt"][metric], sft, strict=True)])
    return f"{ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"


FUNCTIONS: dict[str, Callable[[dict, str], str]] = {
    "gain": _gain,  # gain=cpo: quality over SFT with its interval over held-out prompts
    "diversity": _diversity,
    "best-within": _best_within,
    "beyond": _beyond,  # beyond=ppo: peak RSS minus tensor bytes
    "rss-ratio": _rss_ratio,  # rss-ratio=ppo/dpo
}


def load(source: str, cache: dict[str, dict]) -> dict:
    if source not in cache:
        path = RESULTS / source / "results.json"
        cache[source] = json.loads(path.read_text(encoding="utf-8"))
    return cache[source]


MARKER = re.compile(r"(?<!`)<!--\s*(?:r|results|/r|/results)\b")


def stale(source: str, cache: dict[str, dict] | None = None) -> list[str]:
    """What of a kept comparison is not what the current code derives from it: its rows and
    sections (``derive``), and its report.md."""
    root = RESULTS / source
    results = load(source, {} if cache is None else cache)
    derived = json.loads(json.dumps(derive(json.loads(json.dumps(results)))))
    out = []
    if derived != results:
        keys = sorted(k for k in derived if derived.get(k) != results.get(k))
        out.append(f"docs/results/{source}/results.json: {', '.join(keys)} differ from what the "
                   "current criteria derive from it")
    if report.markdown(derived) != (root / "report.md").read_text(encoding="utf-8"):
        out.append(f"docs/results/{source}/report.md differs from what its results.json renders")
    return out


def refresh(source: str) -> bool:
    """Derive a kept comparison's rows and sections again and render its report; True if it
    changed."""
    root = RESULTS / source
    path = root / "results.json"
    before = path.read_text(encoding="utf-8")
    results = derive(json.loads(before))
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    report.render(root)
    (root / "report.html").unlink(missing_ok=True)  # the HTML embeds the figures: not kept
    return path.read_text(encoding="utf-8") != before


def render_text(text: str, cache: dict[str, dict] | None = None) -> str:
    """``text`` with every generated part written from its comparison."""
    cache = {} if cache is None else cache

    def block(m: re.Match) -> str:
        lines = BLOCKS[m["kind"]](load(m["source"], cache))
        return m.group(1) + "\n".join(lines).rstrip("\n") + "\n" + m.group(5)

    def value(m: re.Match) -> str:
        return m.group(1) + lookup(load(m["source"], cache), m["name"]) + m.group(5)

    return VALUE.sub(value, BLOCK.sub(block, text))


def disagreements(text: str, name: str, cache: dict[str, dict] | None = None) -> list[str]:
    """Each generated part of ``text`` whose content is not what its comparison gives."""
    cache = {} if cache is None else cache
    out = []
    found = len(BLOCK.findall(text)) * 2 + len(VALUE.findall(text)) * 2
    if len(MARKER.findall(text)) != found:  # a marker the patterns do not read is never checked
        out.append(f"{name}: {len(MARKER.findall(text))} result markers, of which {found} are "
                   "well formed: <!-- results SOURCE KIND --> ... <!-- /results --> (each on "
                   "its own line) or <!-- r SOURCE NAME -->value<!-- /r -->")
    for m in BLOCK.finditer(text):
        want = "\n".join(BLOCKS[m["kind"]](load(m["source"], cache))).rstrip("\n") + "\n"
        if m["body"] != want:
            line = text.count("\n", 0, m.start()) + 1
            out.append(f"{name}:{line}: the {m['source']} {m['kind']} block differs from "
                       f"docs/results/{m['source']}/results.json")
    for m in VALUE.finditer(text):
        want = lookup(load(m["source"], cache), m["name"])
        if m["body"] != want:
            line = text.count("\n", 0, m.start()) + 1
            out.append(f"{name}:{line}: {m['source']} {m['name']} is {m['body']!r}, the "
                       f"comparison gives {want!r}")
    return out


def documents() -> list[Path]:
    return sorted({p for pattern in DOCS for p in ROOT.glob(pattern)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a "
                        "generated part disagrees with its comparison")
    args = parser.parse_args(argv)
    cache: dict[str, dict] = {}
    problems, changed = [], []
    for source in sorted(p.name for p in RESULTS.iterdir() if (p / "results.json").is_file()):
        if args.check:
            problems += stale(source, cache)
        elif refresh(source):
            changed.append(f"docs/results/{source}")
    for path in documents():
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(ROOT))
        if args.check:
            problems += disagreements(text, name, cache)
            continue
        new = render_text(text, cache)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(name)
    for problem in problems:
        print(problem, file=sys.stderr)
    if args.check:
        if problems:
            print("run: python scripts/docs_results.py", file=sys.stderr)
        return 1 if problems else 0
    print(f"rewrote {', '.join(changed)}" if changed else "every generated part agrees")
    return 0


if __name__ == "__main__":
    sys.exit(main())
