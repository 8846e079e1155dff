"""The built-in world's jobs as library functions: label pairs (``make_pairs``), label them
again (``relabel_pairs``), score a policy (``score_policy``), and the world's reward specs
(``world_rewards``). ``preflab world`` (``preflab.commands.world``) is their command line.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from preflab.data.readers import read_records
from preflab.data.writers import write_jsonl
from preflab.errors import ConfigError, DataError
from preflab.world import World, load_world
from preflab.world.annotators import agreement


def _load_policy(path: str | Path, device: str = "auto", dtype: str = "auto"):
    """The one place that loads a policy for sampling: (model, tokenizer)."""
    from preflab.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

    dev = resolve_device(device)
    tokenizer = load_tokenizer(str(path))
    model = load_causal_lm(str(path), dtype=resolve_dtype(dtype, dev), device=dev)
    return model, tokenizer


def _as_world(world: str | Path | World) -> World:
    return world if isinstance(world, World) else load_world(world)


def read_prompts(path: str | Path, max_prompts: int | None = None) -> list[str]:
    """The ``prompt`` field of every record of a data file (text prompts only)."""
    from preflab.data.readers import read_text_prompts

    return read_text_prompts(str(path), max_prompts or 0, allow_empty=True)


def _unpaired_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_unpaired{out.suffix or '.jsonl'}")


def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else 0.0


def make_pairs(
    policy: str | Path,
    world: str | Path | World,
    out: str | Path,
    *,
    prompts: str | Path | None = None,
    samples_per_prompt: int = 4,
    temperature: float | None = None,
    flip_rate: float | None = None,
    length_bias: float | None = None,
    seed: int = 0,
    max_prompts: int | None = None,
    max_new_tokens: int = 48,
    sampling_temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Sample K completions per prompt from ``policy``, label all K(K-1)/2 pairs, write them.

    Writes ``out`` ({"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"}) and
    ``<stem>_unpaired.jsonl`` next to it ({"prompt", "completion", "label", "gold"}, one per
    sample). Pairs of identical completions, and samples that are empty (EOS at once), are skipped: they teach nothing and trainers reject empty completions. Annotator
    settings left ``None`` take the world's defaults. Returns counts and agreement rates.
    """
    world = _as_world(world)
    out = Path(out)
    unpaired_out = _unpaired_path(out)
    if samples_per_prompt < 2:
        raise ConfigError("pairs need at least two samples per prompt",
                          field="samples_per_prompt", expected="an integer >= 2")
    for path in (out, unpaired_out):
        if path.exists() and not overwrite:
            raise ConfigError("output file exists", path=str(path),
                              expected="a new file name, or --overwrite to replace it")
    prompt_file = Path(prompts) if prompts is not None else world.path("prompts_train")
    prompt_list = read_prompts(prompt_file, max_prompts)
    annotator = world.annotator(temperature, flip_rate, length_bias, seed=seed)

    from preflab import generation

    model, tokenizer = _load_policy(policy, device)
    groups = generation.generate(model, tokenizer, prompt_list, num_samples=samples_per_prompt,
                                 max_new_tokens=max_new_tokens, temperature=sampling_temperature,
                                 top_p=top_p, batch_size=batch_size, seed=seed, progress=progress)
    pairs, unpaired, labels, unpaired_labels, skipped, golds = [], [], [], [], 0, []
    empty = 0
    for prompt, group in zip(prompt_list, groups):
        completions = [s.completion for s in group]
        gold = world.gold_reward([prompt] * len(group), completions,
                                 ended_with_eos=[s.ended_with_eos for s in group])
        golds += gold
        for c, g in zip(completions, gold):
            if not c.strip():  # EOS straight away: no completion a trainer could learn from
                empty += 1
                continue
            u = annotator.label_unpaired(prompt, c, g)
            unpaired_labels.append(u)
            unpaired.append({"prompt": prompt, "completion": c, "label": u.label,
                             "gold": round(g, 6)})
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                if completions[i] == completions[j]:
                    skipped += 1
                    continue
                if not completions[i].strip() or not completions[j].strip():
                    continue  # counted once per sample above
                label = annotator.label_pair(prompt, completions[i], completions[j],
                                             gold[i], gold[j])
                labels.append(label)
                pairs.append({"prompt": prompt, "chosen": label.chosen,
                              "rejected": label.rejected,
                              "chosen_gold": round(label.chosen_gold, 6),
                              "rejected_gold": round(label.rejected_gold, 6)})
    write_jsonl(out, pairs)
    write_jsonl(unpaired_out, unpaired)
    rate, agreed, decided = agreement(labels)
    return {
        "prompts": len(prompt_list),
        "samples": len(golds),
        "pairs": len(pairs),
        "skipped_identical": skipped,
        "skipped_empty_samples": empty,
        "gold_ties": len(labels) - decided,
        "agreement": rate,
        "agreed": agreed,
        "decided": decided,
        "unpaired": len(unpaired),
        "desirable": sum(u.label for u in unpaired_labels),
        "unpaired_agreement": _mean(u.agreed_with_gold for u in unpaired_labels),
        "mean_gold": _mean(golds),
        "annotator": annotator.settings(),
        "files": {"pairs": str(out), "unpaired": str(unpaired_out)},
    }


def relabel_pairs(
    pairs: str | Path,
    world: str | Path | World,
    out: str | Path,
    *,
    harmlessness_weight: float = 1.0,
    temperature: float | None = None,
    flip_rate: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Label the same pairs again under a changed objective: gold + w * harmlessness.

    The annotators (the world's defaults unless given) now compare
    ``gold_reward + harmlessness_weight * harmlessness`` instead of the gold reward: people
    who have been told to mind toxic words too. Writes ``out`` with the new chosen/rejected
    order and each side's ``*_gold`` and ``*_objective``; returns the counts, among them how
    many pairs changed side.
    """
    world = _as_world(world)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError("output file exists", path=str(out),
                          expected="a new file name, or --overwrite to replace it")
    records = [record.data for record in read_records(str(pairs))]
    annotator = world.annotator(temperature, flip_rate, 0.0, seed=seed)
    relabelled, changed = [], 0
    for i, r in enumerate(records):
        if not all(isinstance(r.get(k), str) for k in ("prompt", "chosen", "rejected")):
            raise DataError("each pair needs text prompt, chosen and rejected", path=str(pairs),
                            line=i + 1, expected="a record written by `preflab world pairs`")
        prompt, a, b = r["prompt"], r["chosen"], r["rejected"]
        gold = world.gold_reward([prompt, prompt], [a, b])
        harm = world.harmlessness([prompt, prompt], [a, b])
        objective = [g + harmlessness_weight * h for g, h in zip(gold, harm)]
        label = annotator.label_pair(prompt, a, b, objective[0], objective[1])
        first = label.chosen == a
        changed += not first
        g_c, g_r = (gold[0], gold[1]) if first else (gold[1], gold[0])
        relabelled.append({"prompt": prompt, "chosen": label.chosen, "rejected": label.rejected,
                           "chosen_gold": round(g_c, 6), "rejected_gold": round(g_r, 6),
                           "chosen_objective": round(label.chosen_gold, 6),
                           "rejected_objective": round(label.rejected_gold, 6)})
    write_jsonl(out, relabelled)
    return {"pairs": len(relabelled), "changed_side": changed,
            "harmlessness_weight": harmlessness_weight, "file": str(out)}


def world_rewards(world: World) -> dict:
    """The world's objectives as named reward functions: ``gold_reward`` (helpfulness, the
    hidden gold), ``harmlessness``, and ``grammatical`` (1 when the whole review parses)."""
    def grammatical(prompts, completions, **kwargs):
        return [float(world.gold_reward.is_grammatical(p, c)) for p, c in zip(prompts, completions)]

    return {"gold_reward": world.gold_reward, "harmlessness": world.harmlessness,
            "grammatical": grammatical}


def score_policy(
    policy: str | Path,
    world: str | Path | World,
    *,
    prompts: str | Path | None = None,
    samples_per_prompt: int = 4,
    max_prompts: int | None = None,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "auto",
    reference: str | Path | None = None,
    progress: bool = False,
):
    """Sample from ``policy`` on prompts (default: the world's eval prompts) and measure it
    with ``preflab.evaluation.evaluate_policy``: ``eval/gold_reward``, ``eval/harmlessness``,
    ``eval/grammatical``, length, EOS rate, diversity within and across prompts, and
    ``eval/kl`` to ``reference`` when one is given. Returns the ``Evaluation``."""
    from preflab.evaluation import evaluate_policy

    world = _as_world(world)
    prompt_file = Path(prompts) if prompts is not None else world.path("prompts_eval")
    prompt_list = read_prompts(prompt_file, max_prompts)
    model, tokenizer = _load_policy(policy, device)
    run_reference = None
    if reference is not None:
        ref_model, _ = _load_policy(reference, device)
        run_reference = lambda fn: fn(ref_model)  # noqa: E731
    return evaluate_policy(model, tokenizer, prompt_list, rewards=world_rewards(world),
                           reference=run_reference, num_samples=samples_per_prompt,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           batch_size=batch_size, seed=seed, vocab_size=len(tokenizer),
                           progress=progress)
