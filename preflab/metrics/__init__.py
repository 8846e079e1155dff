"""Measurements of trained policies: diversity (``diversity``), and more to come.

May import: nothing of preflab's.
"""

from preflab.metrics.diversity import across_input, distinct_n, diversity_report, ead, per_input

__all__ = ["across_input", "distinct_n", "diversity_report", "ead", "per_input"]
