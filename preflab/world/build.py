"""Writing a world directory: model/, sft.jsonl, prompts_train.jsonl, prompts_eval.jsonl, world.json.

Everything comes from one seed: the corpus from ``random.Random(seed)``, the model weights
from ``torch.manual_seed(seed)``; JSON is written with a fixed key order and rounded floats,
so the same seed and sizes give the same files, byte for byte.

- ``sft.jsonl``: ``{"prompt": first 2-4 words of a review, "completion": " " + the rest}``
  (the data layer appends EOS to each completion, so the model learns to stop).
- ``prompts_train.jsonl`` / ``prompts_eval.jsonl``: ``{"prompt": prefix}`` taken from other
  reviews than the SFT corpus; each file's prompts are distinct, and no eval prompt is also a
  train prompt.
- ``model/``: the word-level tokenizer (``preflab.models.tiny.build_word_tokenizer``, saved as a
  fast tokenizer with special tokens and a chat template) and a randomly initialised Llama.
- ``sft.yaml``: the SFT budget the model is sized for, as a ``preflab sft --config`` file
  (hyperparameters only: pass ``--model DIR/model --data DIR/sft.jsonl`` with it).
- ``dpo.yaml``: DPO settings measured to raise held-out gold reward by 0.2 over the SFT model
  on pairs from all train prompts (``preflab dpo --config``, hyperparameters only).
- ``rewards.py``: ``gold_reward`` and ``harmlessness`` as reward-function specs
  (``--gold-reward DIR/rewards.py:gold_reward``), read back through ``load_world``.
- ``world.json``: name and version, seed, sizes, the lexicon and gold parameters (enough for
  ``load_world`` to rebuild the gold reward), annotator defaults, corpus statistics and the
  SFT settings the world was sized for.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

from preflab.data.writers import write_jsonl
from preflab.errors import ConfigError
from preflab.world import WORLD_FILE, WORLD_NAME, WORLD_VERSION
from preflab.world.annotators import DEFAULT_TEMPERATURE, Annotator, agreement
from preflab.world.gold import GoldParams, GoldReward, Harmlessness, params_to_dict
from preflab.world.grammar import Grammar, default_lexicon

FILES = {
    "model": "model",
    "sft": "sft.jsonl",
    "prompts_train": "prompts_train.jsonl",
    "prompts_eval": "prompts_eval.jsonl",
    "sft_config": "sft.yaml",
    "dpo_config": "dpo.yaml",
    "rewards": "rewards.py",
}
# The gold objectives as an ordinary reward-function file: --reward <world>/rewards.py:gold_reward
REWARDS_PY = '''"""This world's gold objectives as reward functions (fn(prompts, completions, **kwargs)).

    --gold-reward <this directory>/rewards.py:gold_reward
    --reward <this directory>/rewards.py:harmlessness
"""

from pathlib import Path

_WORLD = []


def _world():
    if not _WORLD:
        from preflab.world import load_world

        _WORLD.append(load_world(Path(__file__).resolve().parent))
    return _WORLD[0]


def gold_reward(prompts, completions, **kwargs):
    return _world().gold_reward(prompts, completions, **kwargs)


def harmlessness(prompts, completions, **kwargs):
    return _world().harmlessness(prompts, completions, **kwargs)
'''

# The SFT budget the default model is sized for (about two minutes on two CPU cores). A
# randomly initialised model needs a far larger learning rate than fine-tuning a pretrained
# one (`preflab sft`'s default), so the world ships these as an ordinary --config file.
SFT_SETTINGS = {"learning_rate": 3e-3, "batch_size": 32, "max_steps": 1500,
                "warmup_steps": 30, "lr_scheduler": "cosine"}
# DPO from that SFT model on `world pairs` of all train prompts (about 11.6k pairs): the
# DPO paper's lr of 1e-6 is for pretrained billions-parameter models and does not move this one.
DPO_SETTINGS = {"learning_rate": 7e-4, "beta": 0.5, "batch_size": 32, "max_steps": 700,
                "warmup_ratio": 0.1, "lr_scheduler": "cosine", "max_length": 64}


def _round(x: float) -> float:
    return round(float(x), 6)


def _split(words: list[str], rng: random.Random) -> tuple[str, str]:
    k = rng.randint(2, max(2, min(4, len(words) - 2)))
    return " ".join(words[:k]), " " + " ".join(words[k:])


def _unique_prompts(grammar: Grammar, rng: random.Random, count: int, exclude: set[str],
                    what: str) -> list[str]:
    seen: dict[str, None] = {}
    tries = 0
    while len(seen) < count:
        tries += 1
        if tries > 100 * count + 1000:
            raise ConfigError(f"could not find {count} distinct {what} prompts (found "
                              f"{len(seen)}); the grammar's prefixes run out",
                              field=f"num_prompts_{what}", expected="a smaller number")
        prompt, _ = _split(grammar.generate(rng), rng)
        if prompt not in exclude:
            seen.setdefault(prompt, None)
    return list(seen)


def _corpus_stats(sft: list[dict], gold: GoldReward, harm: Harmlessness,
                  temperature: float, seed: int) -> dict:
    prompts = [r["prompt"] for r in sft]
    completions = [r["completion"] for r in sft]
    scores = gold(prompts, completions)
    harmless = harm(prompts, completions)
    toxic = [harm.count(p + c) > 0 for p, c in zip(prompts, completions)]
    top = sorted(range(len(scores)), key=scores.__getitem__)[-max(1, len(scores) // 10):]
    grammatical = sum(gold.is_grammatical(p, c) for p, c in zip(prompts, completions))
    # Annotator agreement on pairs that share a prefix, as SFT samples of one prompt do.
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_prompt[p].append(i)
    annotator = Annotator(temperature=temperature, seed=seed)
    labels = []
    for idx in by_prompt.values():
        for a, b in zip(idx[0::2], idx[1::2]):
            labels.append(annotator.label_pair(prompts[a], completions[a], completions[b],
                                               scores[a], scores[b]))
    rate, _, decided = agreement(labels)
    return {
        "reviews": len(sft),
        "gold_mean": _round(statistics.fmean(scores)),
        "gold_std": _round(statistics.pstdev(scores)),
        "grammatical_rate": _round(grammatical / len(sft)),
        "harmlessness_mean": _round(statistics.fmean(harmless)),
        "toxic_review_rate": _round(statistics.fmean(toxic)),
        "toxic_rate_top_decile_gold": _round(statistics.fmean(toxic[i] for i in top)),
        "mean_review_words": _round(statistics.fmean(len((p + c).split()) for p, c in
                                                     zip(prompts, completions))),
        "mean_completion_words": _round(statistics.fmean(len(c.split()) for c in completions)),
        "annotator_agreement_same_prefix_pairs": _round(rate if rate is not None else 0.0),
        "annotator_agreement_pairs": decided,
    }


def _save_model(model_dir: Path, words: list[str], *, seed: int, hidden_size: int,
                num_layers: int, num_heads: int, max_positions: int, check: list[str]) -> dict:
    from transformers import AutoTokenizer

    from preflab.models.tiny import build_random_causal_lm, build_word_tokenizer

    tokenizer = build_word_tokenizer(words)
    tokenizer.model_max_length = max_positions
    model = build_random_causal_lm(
        "llama", len(tokenizer), hidden_size=hidden_size, num_layers=num_layers,
        num_heads=num_heads, intermediate_size=4 * hidden_size, max_positions=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, seed=seed,
    )
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    reloaded = AutoTokenizer.from_pretrained(model_dir)
    for text in check:  # the saved tokenizer must read the corpus exactly as the built one
        if reloaded(text)["input_ids"] != tokenizer(text)["input_ids"]:
            raise RuntimeError(f"saved tokenizer in {model_dir} does not round-trip {text!r}")
        unk = tokenizer.unk_token_id
        if unk in tokenizer(text)["input_ids"]:
            raise RuntimeError(f"corpus word outside the vocabulary in {text!r}")
    return {
        "arch": "llama", "vocab_size": len(tokenizer), "hidden_size": hidden_size,
        "num_layers": num_layers, "num_heads": num_heads, "max_positions": max_positions,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def build_world(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_reviews: int = 20000,
    num_prompts_train: int = 2000,
    num_prompts_eval: int = 256,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 128,
    temperature: float = DEFAULT_TEMPERATURE,
    flip_rate: float = 0.0,
    length_bias: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a reviews world to ``out_dir`` and return its path (see the module docstring)."""
    out = Path(out_dir)
    _check_args(out, overwrite, num_reviews=num_reviews, num_prompts_train=num_prompts_train,
                num_prompts_eval=num_prompts_eval, hidden_size=hidden_size,
                num_layers=num_layers, num_heads=num_heads, max_positions=max_positions,
                temperature=temperature, flip_rate=flip_rate)
    lexicon = default_lexicon()
    grammar = Grammar(lexicon)
    params = GoldParams()
    gold, harm = GoldReward(grammar, params), Harmlessness(lexicon, params)

    rng = random.Random(seed)
    reviews = range(num_reviews)
    if progress:
        from tqdm.auto import tqdm

        reviews = tqdm(reviews, desc="reviews", unit="review")
    sft = []
    for _ in reviews:
        prompt, completion = _split(grammar.generate(rng), rng)
        sft.append({"prompt": prompt, "completion": completion})
    train = _unique_prompts(grammar, rng, num_prompts_train, set(), "train")
    evals = _unique_prompts(grammar, rng, num_prompts_eval, set(train), "eval")
    stats = _corpus_stats(sft, gold, harm, temperature, seed)

    out.mkdir(parents=True, exist_ok=True)
    for name in [*FILES.values(), WORLD_FILE]:  # only what this function writes
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    model_info = _save_model(
        out / FILES["model"], lexicon.words(), seed=seed, hidden_size=hidden_size,
        num_layers=num_layers, num_heads=num_heads, max_positions=max_positions,
        check=[r["prompt"] + r["completion"] for r in sft[:200]],
    )
    write_jsonl(out / FILES["sft"], sft)
    write_jsonl(out / FILES["prompts_train"], [{"prompt": p} for p in train])
    write_jsonl(out / FILES["prompts_eval"], [{"prompt": p} for p in evals])
    with open(out / FILES["sft_config"], "w", encoding="utf-8", newline="\n") as f:
        f.write("# preflab sft --config this --model <world>/model --data <world>/sft.jsonl\n")
        f.writelines(f"{key}: {value}\n" for key, value in SFT_SETTINGS.items())
    with open(out / FILES["dpo_config"], "w", encoding="utf-8", newline="\n") as f:
        f.write("# preflab dpo --config this --model <sft run>/final --data <world pairs file>\n")
        f.writelines(f"{key}: {value}\n" for key, value in DPO_SETTINGS.items())
    (out / FILES["rewards"]).write_text(REWARDS_PY, encoding="utf-8")
    meta = {
        "world": WORLD_NAME,
        "version": WORLD_VERSION,
        "seed": seed,
        "sizes": {"num_reviews": num_reviews, "num_prompts_train": num_prompts_train,
                  "num_prompts_eval": num_prompts_eval},
        "files": dict(FILES),
        "model": model_info,
        "sft_settings": dict(SFT_SETTINGS),
        "dpo_settings": dict(DPO_SETTINGS),
        "generation": {"max_new_tokens": 48, "temperature": 1.0},
        "annotator": {
            "temperature": temperature, "flip_rate": flip_rate, "length_bias": length_bias,
            "threshold": stats["gold_mean"],
            "length_reference": stats["mean_completion_words"],
        },
        "corpus": stats,
        "gold": params_to_dict(params),
        "lexicon": lexicon.to_dict(),
    }
    with open(out / WORLD_FILE, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
    return out


def _check_args(out: Path, overwrite: bool, **values) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("the output path exists and is not a directory", path=str(out))
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError("the output directory is not empty", path=str(out),
                          expected="an empty or new directory, or --overwrite to replace "
                                   "the world files in it")
    positive = ["num_reviews", "num_prompts_train", "num_prompts_eval", "hidden_size",
                "num_layers", "num_heads", "max_positions"]
    for name in positive:
        if values[name] < 1:
            raise ConfigError("must be a positive integer", field=name, expected="an integer >= 1")
    if values["hidden_size"] % values["num_heads"]:
        raise ConfigError("hidden_size must be a multiple of num_heads", field="hidden_size",
                          expected=f"a multiple of {values['num_heads']}")
    if values["max_positions"] < 64:
        raise ConfigError("too few positions for a review and its completion",
                          field="max_positions", expected="an integer >= 64")
    if values["temperature"] < 0:
        raise ConfigError("annotator temperature must be >= 0", field="temperature",
                          expected="a number >= 0 (0 = deterministic labels)")
    if not 0 <= values["flip_rate"] <= 1:
        raise ConfigError("flip rate out of range", field="flip_rate", expected="in [0, 1]")
