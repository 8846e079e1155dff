"""``preflab reviews build``: the DPO paper's controlled-sentiment task, on a real instruct model.

The DPO paper (Rafailov et al. 2023, section 6.1) aligns a model to write positive movie
reviews, with a sentiment classifier as the ground-truth reward, and measures reward against
KL for each method. Here the same experiment runs on any chat model that a user brings:

- **Prompts** are chat messages asking for a short review of a film, a book, a product or a
  place (``review_prompts``), built from lists of subjects and wordings, none of which asks
  for a sentiment. Two disjoint sets: one for the preference pairs, one for the RL methods'
  unlabelled prompts and the held-out evaluation.
- **The gold reward** is VADER's compound sentiment score of the completion, in [-1, 1]
  (Hutto and Gilbert 2014; the ``vaderSentiment`` package ships its lexicon): a scorer that
  no one here wrote and no compared model ever sees (``gold_reward``).
- **Preference pairs** come from the model's own samples (two per prompt), labelled by
  simulated people: a Bradley-Terry draw on the gold score, ``P(a preferred) =
  sigmoid((gold_a - gold_b) / temperature)``, drawn by the built-in world's annotators
  (``preflab.world.annotators.Annotator``, on the gold score alone). The
  pairs are in the conversational preference format (prompt messages; chosen and rejected as
  assistant messages).
- The instruct model itself plays the SFT checkpoint: every compared method starts from it.

    preflab reviews build --model SmolLM2-135M-Instruct.Q4_1.gguf --out task
    preflab compare --model SmolLM2-135M-Instruct.Q4_1.gguf --pairs task/pairs.jsonl \\
        --prompts task/prompts.jsonl --gold-reward preflab.commands.reviews:gold_reward \\
        --preset real-cpu --output-dir cmp

``task/task.json`` records the settings, the mean gold score of the samples and how often the
simulated labels agree with gold. ``make demo-real`` runs all of it on SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from preflab.config import arg, check_output_dir, parse_config
from preflab.errors import ConfigError
from preflab.world.annotators import Annotator, agreement

VADER_INSTALL = ("the reviews task's gold reward is VADER's sentiment score; install it with "
                 "`pip install 'preflab[real]'` (or `pip install vaderSentiment`)")

FILMS = [
    "a science-fiction film about a mining colony on Mars",
    "a romantic comedy set in a Paris bakery",
    "a documentary about deep-sea fish",
    "a three-hour historical drama about a shipwreck",
    "an animated film about a lost robot",
    "a horror film set in an abandoned hospital",
    "a courtroom thriller about a stolen painting",
    "a musical about a small-town choir",
    "a silent black-and-white film restored last year",
    "a sequel to a superhero film",
    "a low-budget western filmed in the desert",
    "a war film told from a medic's point of view",
    "a heist film set on a cruise ship",
    "a coming-of-age film about a summer camp",
    "a biopic of a famous chess player",
]
BOOKS = [
    "a fantasy novel with a talking dragon",
    "a cookbook of quick vegetarian dinners",
    "a biography of a nineteenth-century inventor",
    "a detective novel set in Victorian London",
    "a self-help book about waking up early",
    "a collection of short stories about the sea",
    "a children's picture book about a brave mouse",
    "a textbook on introductory statistics",
    "a travel memoir about walking across Spain",
    "a poetry collection about city life",
    "a thriller about a hacker on the run",
    "a history of the printing press",
    "a graphic novel about two rival magicians",
    "a science book explaining black holes",
    "a family saga spanning four generations",
]
PRODUCTS = [
    "a pair of running shoes",
    "a budget smartphone",
    "a cordless vacuum cleaner",
    "a stainless-steel water bottle",
    "a pair of noise-cancelling headphones",
    "an electric toothbrush",
    "a camping tent for two people",
    "a mechanical keyboard",
    "a slow cooker",
    "a kids' bicycle",
    "a smart watch",
    "an office chair",
    "a coffee grinder",
    "a rain jacket",
    "a board game for four players",
]
PLACES = [
    "a small Italian restaurant downtown",
    "a seaside hotel",
    "the city's natural history museum",
    "a hiking trail in the mountains",
    "a busy airport",
    "a neighbourhood coffee shop",
    "a public library",
    "an amusement park",
    "a ramen bar near the station",
    "a botanical garden",
    "a youth hostel in the old town",
    "a public swimming pool",
    "a farmers' market",
    "a zoo",
    "a ski resort",
]
SUBJECTS = {"film": FILMS, "book": BOOKS, "product": PRODUCTS, "place": PLACES}
WORDINGS = [
    "Write a short review of {x}.",
    "Write a two-sentence review of {x}.",
    "What do you think of {x}? Answer in a few sentences.",
    "Give your honest opinion of {x}.",
    "Describe your experience with {x} in a short review.",
    "Review {x} in under fifty words.",
    "I am thinking about {x}. Write me a quick review.",
    "Share a brief review of {x} for a website.",
    "How would you rate {x}? Explain briefly.",
    "Write a customer review of {x}.",
    "Tell a friend what you thought of {x}, in two or three sentences.",
    "Summarise your impressions of {x}.",
]


def review_prompts(seed: int = 0) -> list[list[dict]]:
    """Every (subject, wording) prompt as chat messages, in an order shuffled with ``seed``."""
    texts = [w.format(x=x) for xs in SUBJECTS.values() for x in xs for w in WORDINGS]
    random.Random(seed).shuffle(texts)
    return [[{"role": "user", "content": t}] for t in texts]


_ANALYZER = None


def _analyzer():
    global _ANALYZER
    if _ANALYZER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise ConfigError(VADER_INSTALL) from None
        _ANALYZER = SentimentIntensityAnalyzer()
    return _ANALYZER


def gold_reward(prompts: Sequence, completions: Sequence[str], **kwargs) -> list[float]:
    """VADER's compound sentiment of each completion, in [-1, 1] (the prompt is not read)."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(c)["compound"]) for c in completions]


def annotators(temperature: float, seed: int) -> Annotator:
    """The simulated people: the built-in world's Bradley-Terry annotators, on the gold score
    alone (no length bias, no careless flips)."""
    return Annotator(gold_reward, temperature=temperature, seed=seed)


@dataclass
class ReviewsConfig:
    """``preflab reviews build``: the prompts, pairs and gold reward of the sentiment task."""

    model: str = arg("", "The chat model to sample from (a Hugging Face directory, a hub id or "
                     "a .gguf file); it plays the SFT checkpoint.", path="model")
    out: str = arg("", "Directory to write: prompts.jsonl, pairs.jsonl, samples.jsonl, "
                   "task.json.", path="output")
    pair_prompts: int = arg(400, "Prompts sampled for preference pairs (two samples each).",
                            ge=1)
    rl_prompts: int = arg(320, "Further prompts, unlabelled, for the RL methods and the held-out "
                          "evaluation (prompts.jsonl).", ge=2)
    max_new_tokens: int = arg(64, "Longest sampled review, in tokens.", ge=1)
    temperature: float = arg(0.1, "Annotators' Bradley-Terry temperature on the gold score "
                             "(0: the higher score always wins).", ge=0)
    sampling_temperature: float = arg(1.0, "Sampling temperature of the pairs' completions.",
                                      gt=0)
    batch_size: int = arg(32, "Sequences per generate call.", ge=1)
    seed: int = arg(0, "Seed of the prompt order, the samples and the labels.", ge=0,
                    le=2**32 - 1)
    device: str = arg("auto", "Device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
    overwrite: bool = arg(False, "Replace the files of an earlier build in --out.")
    progress: bool = arg(True, "Show progress.")

    def validate(self) -> None:
        for name in ("model", "out"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required", field=name)
        available = len(review_prompts())
        if self.pair_prompts + self.rl_prompts > available:
            raise ConfigError(f"--pair-prompts {self.pair_prompts} + --rl-prompts "
                              f"{self.rl_prompts} is more than the task's {available} prompts",
                              field="pair_prompts", expected=f"at most {available} in all")
        existing = [n for n in ("prompts.jsonl", "pairs.jsonl", "samples.jsonl", "task.json")
                    if (Path(self.out) / n).exists()]
        if existing and not self.overwrite:
            raise ConfigError(f"--out already holds {', '.join(existing)}", path=self.out,
                              field="out", expected="a new directory, or --overwrite")


def build(cfg: ReviewsConfig) -> dict:
    """Sample the pairs' completions, score and label them, write the task; its summary."""
    from preflab import generation, models
    from preflab.data.chat import PromptText, tokenize_prompt, tokenizer_key
    from preflab.data.writers import write_jsonl
    from preflab.runtime.progress import progress_bar

    _analyzer()  # fail before the model loads
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = review_prompts(cfg.seed)
    pair_prompts = prompts[: cfg.pair_prompts]
    rl_prompts = prompts[cfg.pair_prompts : cfg.pair_prompts + cfg.rl_prompts]
    write_jsonl(out / "prompts.jsonl", [{"prompt": p} for p in rl_prompts])

    device = models.resolve_device(cfg.device)
    tokenizer = models.load_tokenizer(cfg.model)
    model = models.load_causal_lm(cfg.model, device=device)
    key = tokenizer_key(tokenizer)  # rendered as every trainer renders them; sampled from the ids
    texts = [PromptText(text, ids, messages, key)
             for messages in pair_prompts for ids, text in [tokenize_prompt(tokenizer, messages)]]
    per_call = max(1, cfg.batch_size // 2)
    bar = progress_bar(total=len(texts), desc="sample", enabled=cfg.progress, unit="prompts")
    groups = []
    for k in range(0, len(texts), per_call):
        groups += generation.generate(model, tokenizer, texts[k:k + per_call], num_samples=2,
                                      max_new_tokens=cfg.max_new_tokens,
                                      temperature=cfg.sampling_temperature,
                                      batch_size=cfg.batch_size, seed=cfg.seed * 7919 + k)
        bar.update(len(texts[k:k + per_call]))
    bar.close()

    people = annotators(cfg.temperature, cfg.seed)
    samples, pairs, labels = [], [], []
    golds: list[float] = []
    for messages, group in zip(pair_prompts, groups):
        completions = [s.completion.strip() for s in group]
        scores = gold_reward([messages] * 2, completions)
        golds += scores
        samples.append({"prompt": messages, "completions": completions, "gold": scores})
        a, b = completions
        if not a or not b or a == b:
            continue  # no preference between identical or empty reviews
        label = people.label_pair(messages, a, b, *scores)
        labels.append(label)
        pairs.append({"prompt": messages,
                      "chosen": [{"role": "assistant", "content": label.chosen}],
                      "rejected": [{"role": "assistant", "content": label.rejected}],
                      "chosen_gold": label.chosen_gold, "rejected_gold": label.rejected_gold})
    write_jsonl(out / "samples.jsonl", samples)
    write_jsonl(out / "pairs.jsonl", pairs)
    summary = {"task": "reviews", "config": asdict(cfg), "pairs": len(pairs),
               "pair_prompts": len(pair_prompts), "rl_prompts": len(rl_prompts),
               "mean_gold": sum(golds) / len(golds) if golds else 0.0,
               "labels_agreeing_with_gold": agreement(labels)[0],
               "gold_reward": "preflab.commands.reviews:gold_reward"}
    (out / "task.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        argv = argv[1:]
    elif argv and argv[0] not in ("-h", "--help"):
        raise ConfigError(f"unknown subcommand {argv[0]!r}", expected="preflab reviews build ...")
    cfg = parse_config(ReviewsConfig, argv, prog="preflab reviews build", description=__doc__)
    check_output_dir(cfg.out, "out")
    summary = build(cfg)
    agree = summary["labels_agreeing_with_gold"]
    print(f"{summary['pairs']} pairs from {summary['pair_prompts']} prompts, "
          f"{summary['rl_prompts']} RL prompts -> {cfg.out}; mean gold {summary['mean_gold']:+.3f}"
          + (f", labels agree with gold on {agree:.0%} of decided pairs" if agree is not None
             else ""))
    return 0


__all__ = ["review_prompts", "gold_reward", "annotators", "build", "ReviewsConfig"]

if __name__ == "__main__":
    from preflab.runtime.exits import run_module

    sys.exit(run_module(main))
