"""``preflab compare``: the article's comparison table, measured on the user's own model and data.

Modules: ``methods`` (the registry of compared methods), ``harness`` (each run in a fresh
subprocess, reused when finished), ``measure`` (``results.json`` from the run directories),
``report`` and ``figures`` (``report.md``, ``report.html``, ``figures/``), ``plan`` (the
memory planner behind ``preflab plan``).
"""
