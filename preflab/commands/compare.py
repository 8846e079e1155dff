"""``preflab compare``: the DPO-vs-RLHF comparison table, measured on the built-in world or your data.

The popular "DPO vs RLHF" article scores the two roads on eight rows (simplicity, memory,
stability, sample efficiency, flexibility, training time, hyperparameters, reward hacking) and
gives DPO 7 of 8. This command measures each row instead, and reports the winner by
measurement beside the article's claim: a counted figure's smaller side, or, for a figure
that varies between runs, the side a test over seeds finds better at alpha 0.05 ("no
significant difference" otherwise, "not tested" on one run per road). A ninth row, not in the
article, says which road made the better policy within --kl-bound nats of KL to SFT.

    preflab compare --world DIR --output-dir CMP [--preset quick|standard|full]
    preflab compare --model SFT_MODEL --pairs PAIRS --prompts PROMPTS --output-dir CMP

Every method starts from the same SFT checkpoint and runs as an ordinary preflab command in a
fresh process, into CMP/runs/<run>/; each trained policy is then scored by the same
evaluation. Finished runs are reused (--fresh redoes them), a run that fails or overruns
--time-budget is recorded and shown, and the rest go on. The results land in
CMP/results.json (every number, with the run it came from), CMP/report.md, CMP/report.html
(self-contained) and CMP/figures/; `preflab report CMP` renders them again.

--dry-run prints every command instead, in dependency order, for a scheduler;
--launcher "torchrun --nproc-per-node 8" prefixes each training command.

--config compare.yaml takes these flags, and flags per stage under `hyperparameters` (a
section each for sft, rm, rm-lora, bon and every method --methods names), e.g.
    hyperparameters: {dpo: {beta: 0.1, learning_rate: 5.0e-7}, ppo: {kl_coef: 0.02}}

Exit status: 0 when every run finished, 3 when the report was written but some runs did
not finish (they are listed in it), 2 for bad input.
"""

from __future__ import annotations

from preflab.compare.run import run_and_print
from preflab.compare.settings import CompareConfig
from preflab.config import parse_config


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CompareConfig, argv, prog="preflab compare", description=__doc__)
    return run_and_print(cfg)
