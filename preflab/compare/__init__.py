"""``preflab compare``: the article's comparison table, measured on the user's own model and data.

Modules: ``settings`` (the flags and presets), ``methods`` (the registry of compared
methods), ``design`` (the jobs a comparison runs), ``harness`` (each job in a fresh process,
reused when finished), ``data`` and ``score`` (compare's own small jobs), ``measure``,
``criteria``, ``stats`` and ``sections`` (``results.json``: the rows, their intervals and
tests), ``report`` and ``figures`` (``report.md``,
``report.html``, ``figures/``), ``plan`` and ``plan_arch`` (``preflab plan``).

May import: errors, config, data, models, runtime, rewards, evaluation, world, algorithms (the registry).
"""


def compare(output_dir: str, *, config: str | None = None, **settings) -> dict:
    """Run a comparison from Python and return its ``results.json`` as a dict.

    ``settings`` are ``preflab compare``'s flags by their Python names (``world=``,
    ``model=``, ``pairs=``, ``prompts=``, ``preset=``, ``methods=``, ``seeds=``, ``jobs=``,
    ...); ``config`` a YAML file of the same settings. Finished runs in ``output_dir`` are
    reused, as on the command line. ``results["unfinished"]`` lists the jobs that did not
    finish (they are also in the report)::

        from preflab.compare import compare
        results = compare("cmp", world="world", preset="quick")
        {row["criterion"]: row["winner"] for row in results["rows"]}
    """
    from preflab.compare.run import run
    from preflab.compare.settings import CompareConfig
    from preflab.config import parse_config

    argv = ["--output-dir", str(output_dir)]
    if config:
        argv += ["--config", str(config)]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            argv += [flag, str(value)]
    cfg = parse_config(CompareConfig, argv, prog="preflab compare")
    results, unfinished = run(cfg)
    if results is not None:
        results["unfinished"] = unfinished
    return results
