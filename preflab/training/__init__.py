"""The training loop's pieces that every trainer shares: the run's start and end (``session``),
how the reference policy is held (``reference``), the direct road's step and evaluation
(``direct``), and the step-based trainer skeleton (``steps``).

May import: errors, config, data, losses, models, runtime, rewards, generation, evaluation.
"""
