"""Online (iterative) DPO: sample from the current policy, judge, pair, train; repeat.

    preflab online-dpo --model SFT --data PROMPTS --judge RM --output-dir RUN \\
        --rounds 4 --pairs-per-round 256 --num-samples 4

This is the article's hybrid: a reward model (or any judge) labels pairs for DPO. With
``--rounds 1`` it is offline DPO on pairs sampled from the SFT model. With more rounds the pairs
come from the policy being trained, so DPO learns on its own distribution, as PPO does
(Xu et al. 2023; Guo et al. 2024, "online AI feedback" when the judge is an LM).

Each round:

1. Draw ``--pairs-per-round`` prompts from ``--data`` (a seeded stream that continues across
   rounds).
2. Sample ``--num-samples`` completions for each from the current policy (seeded by the
   round).
3. Score every completion with ``--judge``. A reward spec (a reward-model directory,
   ``module:function``, ``file.py:function`` or a weighted sum, as ``preflab ppo --reward``
   takes) scores each completion. A pairwise judge of ``preflab.judges`` (``lm:PATH``,
   ``http:MODEL[@URL]``, ``world:DIR``, ``world-gold:DIR``) compares every two completions
   of a prompt, in both orders, and a completion's score is its win rate. Its answers are
   cached in ``RUN/judge-cache.sqlite``, so a resumed run never asks twice.
4. Pair the best completion (chosen) with the worst (rejected). A prompt whose completions all
   score the same gives no pair and is counted as a tie.
5. Take ``--steps-per-round`` DPO steps on the round's pairs, with the loss of
   ``preflab dpo --loss``.

The reference is fixed (``--reference fixed``: the starting model) or moving (``moving``: the
policy as it was at the start of the round). Each round's samples, scores and pairs are kept
in ``RUN/rounds/round-N/``, the token ids too. A killed run resumes at the round and step where
it stopped: the round's pairs are read back, and a moving reference is read from that round's
``reference.safetensors``.

The DPO steps are ``preflab.training.steps``' loop (``begin``, ``take_steps`` once per round,
``finish``) over ``preflab.training.direct.DirectSteps``, as in ``preflab dpo``. The rounds
around them are this file's own ``train``: ``steps.train`` draws every step from one stream of
fixed examples, while here each round brings new pairs and a new stream, and the checkpoint
holds the prompt stream instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from preflab import models
from preflab.algorithms import Compared, Method
from preflab.config import arg, flag, fsdp_arg, parse_config
from preflab.data import (
    PreferenceExample,
    TruncationPolicy,
    check_dataset,
    load_prompt_dataset,
    write_jsonl,
)
from preflab.data.writers import write_text
from preflab.errors import ConfigError
from preflab.generation import generate
from preflab.losses import get_direct_loss
from preflab.rewards import check_reward_specs, load_reward
from preflab.runtime import distributed
from preflab.runtime.stream import ExampleStream
from preflab.training import reference, session, steps
from preflab.training.direct import DirectConfig, DirectSteps

REFERENCES = ("fixed", "moving")


@dataclass
class OnlineDPOConfig(DirectConfig):
    """``preflab online-dpo``: DPO's flags, plus the rounds of sampling and judging."""

    judge: str = arg("", "What ranks the sampled completions: a reward spec (a reward-model "
                     "directory, module:function, file.py:function, or a weighted sum "
                     "'a:0.7,b:0.3'), or a pairwise judge (lm:PATH, http:MODEL[@URL], "
                     "world:DIR, world-gold:DIR; see docs/judges.md). A function runs as Python "
                     "code with your rights: see docs/security.md.")
    rounds: int = arg(4, "Rounds of sample -> judge -> pair -> train.", ge=1)
    pairs_per_round: int = arg(256, "Prompts sampled in each round (one pair each, ties "
                               "aside).", ge=1)
    num_samples: int = arg(4, "Completions sampled per prompt; the best and the worst make "
                           "the pair.", ge=2)
    fsdp: bool = fsdp_arg("policy", "; the reference stays whole on each process, every "
                          "process samples each round in lockstep, and rank 0 judges")
    steps_per_round: int = arg(0, "DPO steps on each round's pairs (0: one pass, "
                               "pairs-per-round / global batch, rounded up).", ge=0)
    reference: str = arg("fixed", "fixed: the starting model throughout; moving: the policy "
                         "at the start of each round.", choices=REFERENCES)
    max_new_tokens: int = arg(48, "Longest sampled completion.", ge=1)
    temperature: float = arg(1.0, "Sampling temperature.", gt=0)
    generation_batch_size: int = arg(64, "Prompts per generate() call.", ge=1)

    def validate(self) -> None:
        super().validate()
        if not self.judge:
            raise ConfigError("--judge is required", field="judge")
        if not pairwise(self.judge):
            check_reward_specs(self.judge, flag="--judge")
        else:
            from preflab.judges import JudgeOptions, check_judge_spec

            check_judge_spec(self.judge, JudgeOptions(flag="--judge", seed=self.seed))
        if self.max_steps != -1:
            raise ConfigError("online-dpo counts its steps as --rounds x --steps-per-round; "
                              "leave --max-steps unset", field="max_steps")
        if self.precompute_ref:
            raise ConfigError("--precompute-ref: online DPO samples new pairs every round, so "
                              "there is nothing to compute ahead", field="precompute_ref")
        for name in ("eval_data", "eval_data_split"):
            if getattr(self, name):
                raise ConfigError(f"--{flag(name)}: online DPO has no fixed pairs to hold out; "
                                  "use --eval-prompts (and --gold-reward)", field=name)
        if self.reference == "moving" and self.lora_rank > 0:
            raise ConfigError("--reference moving copies the policy's weights into the reference "
                              "each round, which a LoRA policy (base plus adapters) cannot give a "
                              "plain model; use --reference fixed, or full fine-tuning",
                              field="reference")

    def steps_each_round(self, world_size: int) -> int:
        global_batch = self.batch_size * self.grad_accum * world_size
        return self.steps_per_round or max(1, math.ceil(self.pairs_per_round / global_batch))


def pairwise(spec: str) -> bool:
    """Whether ``spec`` names a pairwise judge of ``preflab.judges`` (not a reward spec)."""
    prefix, sep, _ = spec.partition(":")
    return bool(sep) and prefix in ("lm", "http", "world", "world-gold")


class PairwiseScorer:
    """A pairwise judge as a scorer: each completion's win rate over the others of its prompt
    (every pair asked in both orders by the judge itself)."""

    def __init__(self, judge, num_samples: int) -> None:
        from preflab.judges.pairing import PAIRINGS, Group, comparisons

        self.judge, self.k = judge, num_samples
        self._pairs = lambda prompts, completions: comparisons(
            [Group(p, completions[i * self.k : (i + 1) * self.k]) for i, p in enumerate(prompts)],
            PAIRINGS["best-worst"])

    def models(self) -> list:
        return []

    def __call__(self, flat_prompts, completions, **kwargs) -> tuple[list[float], dict]:
        from preflab.judges.pairing import win_rates

        prompts = flat_prompts[:: self.k]
        todo = self._pairs(prompts, completions)
        p = self.judge([prompts[g] for g, _, _ in todo],
                       [completions[g * self.k + i] for g, i, _ in todo],
                       [completions[g * self.k + j] for g, _, j in todo])
        wins = win_rates(todo, p)
        return [wins.get(n // self.k, {}).get(n % self.k, 0.5)
                for n in range(len(completions))], {}


class PromptState:
    """The checkpointed part of the run beyond weights: the prompt stream's position."""

    def __init__(self, stream: ExampleStream) -> None:
        self.stream = stream

    @property
    def epoch(self) -> float:
        return self.stream.epoch

    def state_dict(self) -> dict:
        return {"prompts": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["prompts"])


def make_pairs(prompts: list[str], samples, scores: list[float]) -> tuple[list[dict], int]:
    """Best against worst per prompt (records with text, scores and token ids); ties count."""
    pairs, ties, k = [], 0, len(samples[0]) if samples else 0
    for i, (prompt, group) in enumerate(zip(prompts, samples)):
        mine = scores[i * k : (i + 1) * k]
        best = max(range(k), key=lambda j: (mine[j], -j))
        worst = min(range(k), key=lambda j: (mine[j], j))
        if mine[best] == mine[worst] or group[best].completion_ids == group[worst].completion_ids:
            ties += 1
            continue
        pairs.append({"prompt": prompt, "chosen": group[best].completion,
                      "rejected": group[worst].completion, "chosen_score": mine[best],
                      "rejected_score": mine[worst], "prompt_ids": group[best].prompt_ids,
                      "chosen_ids": group[best].completion_ids,
                      "rejected_ids": group[worst].completion_ids})
    return pairs, ties


def sample_round(cfg: OnlineDPOConfig, model, tokenizer, prompts: list[str], number: int) -> list:
    """Step 2 of a round: the policy's samples (in eval mode), ``result[i][j]`` prompt i's
    j-th. Collective for a sharded model: every process calls it with the same prompts."""
    model.eval()
    try:
        return generate(models.unwrap(model), tokenizer, prompts, num_samples=cfg.num_samples,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        batch_size=cfg.generation_batch_size,
                        seed=cfg.seed * 1_000_003 + number, progress=False)
    finally:
        model.train()


def judge_round(cfg: OnlineDPOConfig, run, judge, prompts: list[str], samples: list,
                number: int, folder: Path) -> dict:
    """Steps 3 and 4 of a round (on the main process): samples.jsonl, pairs.jsonl,
    round.json."""
    flat_prompts = [p for p, group in zip(prompts, samples) for _ in group]
    flat = [s for group in samples for s in group]
    with session.diverged_at(run, f"round {number} (judging the samples)"):
        scores, _ = judge(flat_prompts, [s.completion for s in flat],
                          ended_with_eos=[s.ended_with_eos for s in flat])
        # only the main process judges: no collective here, the others wait at a barrier
        session.require_finite(run, f"round {number}", local=True, judge_score=scores)
    pairs, ties = make_pairs(prompts, samples, scores)
    if not pairs:
        raise ConfigError(f"round {number}: the judge gave every completion of every prompt "
                          "the same score, so there is no pair to learn from",
                          field="judge", expected="a judge that tells completions apart")
    write_jsonl(folder / "samples.jsonl", (
        {"prompt": p, "completions": [s.completion for s in group],
         "scores": scores[i * cfg.num_samples : (i + 1) * cfg.num_samples]}
        for i, (p, group) in enumerate(zip(prompts, samples))))
    write_jsonl(folder / "pairs.jsonl", pairs)
    figures = {"round": number, "round/pairs": len(pairs), "round/ties": ties,
               "round/judge_score": sum(scores) / len(scores),
               "round/chosen_score": sum(p["chosen_score"] for p in pairs) / len(pairs),
               "round/rejected_score": sum(p["rejected_score"] for p in pairs) / len(pairs)}
    write_text(folder / "round.json", json.dumps(figures) + "\n")  # last: the round is complete
    return figures


def read_round(folder: Path) -> tuple[list[PreferenceExample], dict]:
    pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    examples = [PreferenceExample(p["prompt_ids"], p["chosen_ids"], p["rejected_ids"])
                for p in pairs]
    return examples, json.loads((folder / "round.json").read_text())


@session.trainer
def train(cfg: OnlineDPOConfig) -> dict:
    check_dataset(cfg.data, "prompt", **cfg.data_source(), split_flag="--data-split")
    check_dataset(cfg.eval_prompts, "prompt")
    run = session.start_run(cfg, "online-dpo")
    session.check_fsdp(cfg, run)
    spec = get_direct_loss(cfg.loss)
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    policy = TruncationPolicy(cfg.max_length, cfg.max_prompt_length or None, cfg.overlong)
    prompt_examples, data_report = load_prompt_dataset(cfg.data, tokenizer, policy,
                                                       **cfg.data_source())
    prompts_all = [e.prompt for e in prompt_examples]
    eval_prompts, gold_fn = session.sampled_evaluation(cfg, run, tokenizer, policy)
    if pairwise(cfg.judge):
        from preflab.judges import JudgeOptions, load_judge

        judge = PairwiseScorer(load_judge(
            cfg.judge, cache=run.dir / "judge-cache.sqlite",
            options=JudgeOptions(flag="--judge", seed=cfg.seed, device=cfg.device,
                                 allow_pickle=cfg.allow_pickle,
                                 trust_remote_code=cfg.trust_remote_code)), cfg.num_samples)
    else:
        judge = load_reward(cfg.judge, flag="--judge", device=run.device,
                            dtype=run.precision.frozen, allow_pickle=cfg.allow_pickle,
                            trust_remote_code=cfg.trust_remote_code,
                            attn_implementation=cfg.attn_implementation)
    if run.ctx.is_main:
        print(f"data: {len(prompts_all)} prompts; {data_report.summary()}", flush=True)

    model = session.shard_if_asked(cfg, run, session.load_trainable(cfg, run))
    model.train()
    session.claim_run_dir(run)
    ref = reference.live(cfg, run, model, needed=spec.needs_reference)
    ref_model = ref.model  # the frozen copy a moving reference updates (None otherwise)

    per_round = cfg.steps_each_round(run.ctx.world_size)
    # The DPO steps of every round, on the pairs of the round (job.examples): the loop of
    # preflab.training.steps, from begin to finish. Only the rounds' preparation is this file's.
    job = DirectSteps(
        cfg=cfg, run=run, spec=spec, model=model, reference=ref, tokenizer=tokenizer,
        examples=[], eval_examples=[], prompts=eval_prompts, gold_fn=gold_fn,
        data_report=data_report, desc="online-dpo",
        postfix=("loss", "round/judge_score", "eval/gold_reward"),
        headline=("eval/gold_reward", "eval/kl"),
        extra={"loss": spec.name, "reference_mode": ref.mode, "reference": cfg.reference,
               "rounds": cfg.rounds, "steps_per_round": per_round},
        reward_models=judge.models(),
    )
    prompt_stream = ExampleStream(list(range(len(prompts_all))), seed=cfg.seed,
                                  rank=0, world_size=1)  # every process draws the same prompts
    loop, start_step = steps.begin(cfg, run, job, cfg.rounds * per_round,
                                   PromptState(prompt_stream))
    global_batch = cfg.batch_size * cfg.grad_accum * run.ctx.world_size
    step = start_step
    for number in range(start_step // per_round + 1, cfg.rounds + 1):
        folder = run.dir / "rounds" / f"round-{number}"
        first = (number - 1) * per_round
        mid_round = start_step > first  # resumed inside this round: its files exist
        if not mid_round:
            drawn = [prompts_all[i] for i in prompt_stream.next_batch(cfg.pairs_per_round)]
        if cfg.reference == "moving" and ref_model is not None:
            if mid_round:
                from safetensors.torch import load_model

                load_model(ref_model, str(folder / "reference.safetensors"))
            else:  # a sharded policy's weights gathered on every process
                ref_model.load_state_dict({k: distributed.whole(v) for k, v in
                                           models.unwrap(model).state_dict().items()})
                if run.ctx.is_main:
                    from safetensors.torch import save_model

                    folder.mkdir(parents=True, exist_ok=True)
                    save_model(ref_model, str(folder / "reference.safetensors"))
        # a sharded policy samples on every process (rank 0 writes round.json only after
        # sampling, which waits for every process: each sees the same file system here)
        if (not mid_round and session.samples_here(cfg, run)
                and not (folder / "round.json").exists()):
            samples = sample_round(cfg, model, tokenizer, drawn, number)
            if run.ctx.is_main:
                folder.mkdir(parents=True, exist_ok=True)
                judge_round(cfg, run, judge, drawn, samples, number, folder)
        distributed.barrier(run.ctx)
        job.examples, figures = read_round(folder)
        if run.ctx.is_main and not mid_round:
            print(f"round {number}: {figures['round/pairs']} pairs ({figures['round/ties']} "
                  f"ties), mean judge score {figures['round/judge_score']:.4g}", flush=True)
        pair_stream = ExampleStream(list(range(len(job.examples))),
                                    seed=cfg.seed * 7919 + number,
                                    rank=run.ctx.rank, world_size=run.ctx.world_size)
        pair_stream.position = (max(start_step, first) - first) * global_batch
        step = steps.take_steps(loop, pair_stream, max(start_step, first), number * per_round,
                                figures=figures, log_at=first + 1)
        start_step = max(start_step, number * per_round)
    return steps.finish(loop, step, tokenizer)


METHOD = Method(
    name="online-dpo", road="direct",
    summary="online DPO: rounds of sampling from the policy, judging, pairing best against "
            "worst, and DPO steps",
    config=OnlineDPOConfig, roles=("policy", "reference", "reward"), trains=("policy",),
    prior_seconds=200,
    compared=(Compared(
        "online-dpo", "Online DPO (RM judge)", "the hybrid: the RLHF road's reward model labels "
        "the policy's own samples (best against worst of 4) for DPO, in rounds",
        "online DPO: reference copy + reward model", shape="online",
        world={"learning_rate": 5e-4, "beta": 0.5, "batch_size": 32, "rounds": 4,
               "pairs_per_round": 1024, "steps_per_round": 75, "warmup_ratio": 0.1,
               "eval_every": 75},
        user={"eval_every": 100}),),
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(OnlineDPOConfig, argv, prog="preflab online-dpo", description=__doc__)
    session.run_command(train, cfg)
    return 0
