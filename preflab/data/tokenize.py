"""Turn records into token ids for each kind of training, under one truncation policy.

Rules (the same for every loader, so SFT, DPO, KTO and PPO see a prompt identically):

- A text prompt is ``tokenizer(prompt, add_special_tokens=True)``, so a tokenizer that adds
  BOS does so. A text completion is ``tokenizer(completion, add_special_tokens=False)`` plus
  EOS (where the tokenizer has one and the completion does not already end with it).
- A conversational prompt (a list of messages) is rendered with the tokenizer's chat template
  and ``add_generation_prompt=True``, then tokenized with ``add_special_tokens=False`` (the
  template writes any BOS itself): ``preflab.data.chat.tokenize_prompt``, the one rendering
  every command uses (a tokenizer with no template is a ``DataError`` naming the record). Its completion is the rendering of prompt + completion
  messages, tokenized, minus the prompt's tokens, plus EOS. The rendered prompt must be a
  prefix of the rendered conversation, or the reply cannot be told apart from the prompt:
  that is a ``DataError``. (Where the texts agree but the tokenizer merged across the
  boundary, the remaining text is tokenized alone.) A ``messages`` record trains on its last
  assistant message; the messages before it are the prompt.
- A ``text`` record (language modeling) is all completion: ``tokenizer(text,
  add_special_tokens=True)`` plus EOS, with the completion mask 1 everywhere (the log-prob
  code never scores position 0, which has no context).
- Truncation: a prompt longer than ``max_prompt_length`` keeps its LAST tokens (the end of a
  prompt is next to the reply and matters most). A prompt that leaves no room for one
  completion token within ``max_length`` is an error, or is skipped with ``overlong="skip"``.
  Then each completion is cut on the right so that prompt + completion <= ``max_length``.
  The report counts records read, prompts cut, completions cut (chosen and rejected each
  count), and records skipped.
- A preference pair whose chosen and rejected are the same response states no preference:
  every loader skips it (with or without a ``prompt`` field) and counts it in the report.
  A dataset with nothing left after skipping is a ``DataError`` naming the first record
  skipped.
- Unpaired (KTO) data may also be preference data: each pair gives a desirable example
  (the chosen completion) and an undesirable one (the rejected), with the same prompt.
- Prompt data takes the prompt of any record that has one (a ``messages`` record: the
  messages before its last assistant reply); ``PromptExample.prompt`` is the rendered prompt
  text before truncation, for reward functions and judges. It is a ``PromptText`` that
  carries the (truncated) ids, and ``preflab.generation.generate`` samples from those ids.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from preflab.data.chat import PromptText, render_chat_prompt, tokenize_prompt, tokenizer_key
from preflab.data.formats import (
    RecordKind,
    is_identical_pair,
    parse_label,
    preference_parts,
    resolve_kind,
    validate,
)
from preflab.data.readers import Record, read_records
from preflab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

K = RecordKind
SFT_KINDS = (K.LANGUAGE_MODELING, K.PROMPT_COMPLETION, K.CONVERSATIONAL)
PREFERENCE_KINDS = (K.PREFERENCE, K.IMPLICIT_PREFERENCE)
UNPAIRED_KINDS = (K.UNPAIRED, K.PREFERENCE, K.IMPLICIT_PREFERENCE)
PROMPT_KINDS = (K.PROMPT_ONLY, K.PROMPT_COMPLETION, K.CONVERSATIONAL, K.PREFERENCE,
                K.IMPLICIT_PREFERENCE, K.UNPAIRED)
T = TypeVar("T")


@dataclass
class SFTExample:
    """A whole sequence; ``completion_mask`` is 1 where the loss counts the token's log-prob."""

    input_ids: list[int]
    completion_mask: list[int]


@dataclass
class PreferenceExample:
    """One prompt with a chosen and a rejected completion (each ending in EOS unless cut)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class UnpairedExample:
    """One prompt and completion; ``label`` True = desirable, False = undesirable."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool


@dataclass
class PromptExample:
    """A prompt to generate from; ``prompt`` is its rendered text (before truncation), a
    ``preflab.data.chat.PromptText`` that carries ``prompt_ids`` to ``generate``."""

    prompt_ids: list[int]
    prompt: str


@dataclass
class TruncationPolicy:
    """How long sequences may be, and what to do with a prompt that leaves no room."""

    max_length: int = 512
    """Most tokens in prompt + completion."""
    max_prompt_length: int | None = None
    """Most prompt tokens; a longer prompt keeps its last tokens. None: no separate limit."""
    overlong: str = "error"
    """A prompt with no room for a completion: "error" stops with its file and line, "skip" drops it."""

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"--max-length {self.max_length} is too small",
                              expected="at least 2 (one prompt and one completion token)")
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(f"--max-prompt-length {self.max_prompt_length} leaves no room "
                              f"for a completion under --max-length {self.max_length}",
                              expected=f"a value from 1 to {self.max_length - 1}")
        if self.overlong not in ("error", "skip"):
            raise ConfigError(f"--overlong {self.overlong!r} is not a choice",
                              expected="'error' or 'skip'")


@dataclass
class TruncationReport:
    """What truncation did to a dataset; shown to the user and saved with the run."""

    records: int = 0
    """Records read and checked, skipped ones included."""
    prompts_truncated: int = 0
    """Prompts cut on the left to ``max_prompt_length``."""
    completions_truncated: int = 0
    """Completions cut on the right to fit ``max_length`` (chosen and rejected each count)."""
    skipped: int = 0
    """Records skipped as overlong: a prompt with no room for a completion."""
    skipped_identical: int = 0
    """Preference pairs skipped because chosen == rejected (nothing to prefer)."""

    def summary(self) -> str:
        return (f"{self.records} records: {self.prompts_truncated} prompts truncated (left), "
                f"{self.completions_truncated} completions truncated (right), "
                f"{self.skipped} skipped as overlong"
                + (f", {self.skipped_identical} pairs skipped with chosen == rejected"
                   if self.skipped_identical else ""))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Encoder:
    """Tokenizes the parts of one record at a time, truncating and counting into a report."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, policy: TruncationPolicy) -> None:
        self.tokenizer = tokenizer
        self.policy = policy
        self.report = TruncationReport()
        self.eos: int | None = tokenizer.eos_token_id

    def ids(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def with_eos(self, ids: list[int]) -> list[int]:
        if self.eos is not None and (not ids or ids[-1] != self.eos):
            ids = [*ids, self.eos]
        return ids

    def render(self, record: Record, messages: list, *, generation_prompt: bool,
               field: str | None = None) -> str:
        return render_chat_prompt(self.tokenizer, messages, generation_prompt=generation_prompt,
                                  path=record.path, line=record.line, field=field)

    def prompt(self, record: Record, prompt: Any,
               field: str | None = None) -> tuple[list[int], str]:
        """The prompt's ids (untruncated) and its text (``preflab.data.chat.tokenize_prompt``)."""
        return tokenize_prompt(self.tokenizer, prompt, path=record.path, line=record.line,
                               field=field)

    def completion(self, record: Record, prompt: Any, prompt_text: str,
                   prompt_ids: list[int], completion: Any, field: str) -> list[int]:
        """The completion's ids plus EOS (untruncated); see the module docstring."""
        if not isinstance(completion, list):
            return self.with_eos(self.ids(completion, special=False))
        full = self.render(record, prompt + completion, generation_prompt=False, field=field)
        if not full.startswith(prompt_text):
            raise DataError(
                "the tokenizer's chat template renders the prompt (with its generation prompt) "
                "differently from the start of the whole conversation, so the reply cannot be "
                "separated from the prompt", path=record.path, line=record.line, field=field,
                expected="a chat template whose rendering of the prompt messages with "
                         "add_generation_prompt=True is a prefix of the rendered conversation")
        full_ids = self.ids(full, special=False)
        if full_ids[: len(prompt_ids)] == prompt_ids:
            return self.with_eos(full_ids[len(prompt_ids):])
        return self.with_eos(self.ids(full[len(prompt_text):], special=False))

    def fit_prompt(self, record: Record, ids: list[int], field: str) -> list[int] | None:
        """Apply ``max_prompt_length`` (keep the end) and the overlong rule; None = skip."""
        policy = self.policy
        if policy.max_prompt_length is not None and len(ids) > policy.max_prompt_length:
            ids = ids[-policy.max_prompt_length:]
            self.report.prompts_truncated += 1
        if len(ids) < policy.max_length:
            return ids
        if policy.overlong == "skip":
            self.report.skipped += 1
            return None
        raise DataError(
            f"prompt is {len(ids)} tokens, longer than --max-length {policy.max_length} leaves "
            "room for (a completion needs at least one token)", path=record.path,
            line=record.line, field=field,
            expected=f"a prompt under {policy.max_length} tokens, or --max-prompt-length / "
                     "--overlong skip")

    def fit_completion(self, prompt_length: int, ids: list[int]) -> list[int]:
        room = self.policy.max_length - prompt_length
        if len(ids) > room:
            self.report.completions_truncated += 1
            return ids[:room]
        return ids

    def pair(self, record: Record, kind: RecordKind, prompt: Any, completions: Sequence[Any],
             ) -> tuple[list[int], list[list[int]]] | None:
        """A prompt and its completions, tokenized and truncated; None when skipped."""
        field, names = FIELDS_READ[kind]
        prompt_ids, text = self.prompt(record, prompt, field)
        full = [self.completion(record, prompt, text, prompt_ids, c, name)
                for c, name in zip(completions, names, strict=True)]
        fitted = self.fit_prompt(record, prompt_ids, field)
        if fitted is None:
            return None
        return fitted, [self.fit_completion(len(fitted), ids) for ids in full]


# The fields a record of each kind is read from, (the prompt's, the completions'), for
# messages that name the field at fault. They follow from the kind, not from the keys present:
# a record may carry more (UltraFeedback's pairs hold the whole chat in messages too).
FIELDS_READ: dict[RecordKind, tuple[str, tuple[str, ...]]] = {
    K.LANGUAGE_MODELING: ("text", ("text",)),
    K.PROMPT_COMPLETION: ("prompt", ("completion",)),
    K.CONVERSATIONAL: ("messages", ("messages",)),
    K.PREFERENCE: ("prompt", ("chosen", "rejected")),
    K.IMPLICIT_PREFERENCE: ("chosen", ("chosen", "rejected")),
    K.UNPAIRED: ("prompt", ("completion",)),
    K.PROMPT_ONLY: ("prompt", ()),
}


PURPOSES = {"sft": (SFT_KINDS, "SFT"), "preference": (PREFERENCE_KINDS, "preference training"),
            "unpaired": (UNPAIRED_KINDS, "unpaired (KTO) training"),
            "prompt": (PROMPT_KINDS, "a prompt dataset")}
# Records read and checked by ``check_dataset``, kept for the load that follows.
_CHECKED: dict[tuple[str, str | None, str | None, str], list[tuple[Record, RecordKind]]] = {}


def check_dataset(source: str, purpose: str, *, split: str | None = None,
                  config: str | None = None, split_flag: str | None = None) -> None:
    """Read and check every record of a local ``source`` for ``purpose`` (sft, preference,
    unpaired, prompt) before any tokenizer or model loads, so bad data fails first, not after
    a download. The checked records are kept for the ``load_*_dataset`` call that follows. A
    hub dataset is left to that call (reading it is the download). ``split``, ``config``
    and ``split_flag`` as ``read_records`` takes them."""
    if not source or not Path(os.path.expanduser(source)).exists():
        return
    accepted, what = PURPOSES[purpose]
    split, config = split or None, config or None
    _CHECKED[(source, split, config, purpose)] = _checked(
        read_records(source, split=split, config=config, split_flag=split_flag), accepted, what)


def forget_checked() -> None:
    """Drop records kept by ``check_dataset`` that no load took (a command that failed)."""
    _CHECKED.clear()


def _checked(records: list[Record], accepted: Sequence[RecordKind],
             purpose: str) -> list[tuple[Record, RecordKind]]:
    out = []
    for record in records:
        kind = resolve_kind(record, accepted, purpose)
        validate(record, kind)
        out.append((record, kind))
    return out


def _load(source: str, split: str | None, config: str | None, accepted: Sequence[RecordKind],
          purpose: str, tokenizer: PreTrainedTokenizerBase, policy: TruncationPolicy,
          build: Callable[[_Encoder, Record, RecordKind], list[T]]) -> tuple[list[T], TruncationReport]:
    """Read, check and tokenize every record of ``source`` (its ``split``, of hub
    configuration ``config``) with ``build``."""
    encoder = _Encoder(tokenizer, policy)
    report = encoder.report
    examples: list[T] = []
    first_skipped: tuple[Record, str] | None = None  # (record, field), for the error below
    name = next(k for k, (kinds, _) in PURPOSES.items() if tuple(kinds) == tuple(accepted))
    split, config = split or None, config or None
    checked = _CHECKED.pop((source, split, config, name), None)
    if checked is None:
        checked = _checked(read_records(source, split=split, config=config), accepted, purpose)
    for record, kind in checked:
        report.records += 1
        if kind in PREFERENCE_KINDS and is_identical_pair(record):
            report.skipped_identical += 1
            first_skipped = first_skipped or (record, "rejected")
            continue
        built = build(encoder, record, kind)
        if not built:
            first_skipped = first_skipped or (record, FIELDS_READ[kind][0])
        examples.extend(built)
    if not examples:  # every record was skipped: say so here, not as an empty batch later
        raise _all_skipped(report, policy, *first_skipped)  # type: ignore[misc]
    return examples, report


def _all_skipped(report: TruncationReport, policy: TruncationPolicy, first: Record,
                 field: str) -> DataError:
    """Nothing left to train on: why, counted, and the first record skipped."""
    reasons, expected = [], []
    if report.skipped_identical:
        reasons.append(f"{report.skipped_identical} with chosen and rejected identical "
                       "(no preference to learn)")
        expected.append("pairs whose rejected response differs from the chosen one")
    if report.skipped:
        reasons.append(f"{report.skipped} with a prompt longer than --max-length "
                       f"{policy.max_length} leaves room for")
        expected.append("a larger --max-length, or --max-prompt-length to cut prompts")
    return DataError(f"all {report.records} records were skipped, this one first: "
                     f"{'; '.join(reasons)}", path=first.path, line=first.line, field=field,
                     expected="; or ".join(expected))


def load_sft_dataset(source: str, tokenizer: PreTrainedTokenizerBase, policy: TruncationPolicy,
                     *, completion_only: bool = True, split: str | None = None,
                     config: str | None = None) -> tuple[list[SFTExample], TruncationReport]:
    """SFT examples from text, prompt-completion or conversational records.

    ``completion_only=False`` also counts the prompt tokens in the loss (mask 1 there).
    ``split`` and ``config`` pick the part of ``source`` to read (``read_records``); so for
    every loader.
    """

    def build(enc: _Encoder, record: Record, kind: RecordKind) -> list[SFTExample]:
        data = record.data
        if kind is K.LANGUAGE_MODELING:
            ids = enc.fit_completion(0, enc.with_eos(enc.ids(data["text"], special=True)))
            return [SFTExample(ids, [1] * len(ids))]
        if kind is K.CONVERSATIONAL:
            prompt, completion = data["messages"][:-1], data["messages"][-1:]
        else:
            prompt, completion = data["prompt"], data["completion"]
        fitted = enc.pair(record, kind, prompt, [completion])
        if fitted is None:
            return []
        prompt_ids, (completion_ids,) = fitted
        mask = [0 if completion_only else 1] * len(prompt_ids) + [1] * len(completion_ids)
        return [SFTExample(prompt_ids + completion_ids, mask)]

    return _load(source, split, config, SFT_KINDS, "SFT", tokenizer, policy, build)


def load_preference_dataset(source: str, tokenizer: PreTrainedTokenizerBase,
                            policy: TruncationPolicy, *, split: str | None = None,
                            config: str | None = None,
                            ) -> tuple[list[PreferenceExample], TruncationReport]:
    """Preference pairs from explicit- or implicit-prompt preference records."""

    def build(enc: _Encoder, record: Record, kind: RecordKind) -> list[PreferenceExample]:
        prompt, chosen, rejected = preference_parts(record, kind)
        fitted = enc.pair(record, kind, prompt, [chosen, rejected])
        if fitted is None:
            return []
        prompt_ids, (chosen_ids, rejected_ids) = fitted
        return [PreferenceExample(prompt_ids, chosen_ids, rejected_ids)]

    return _load(source, split, config, PREFERENCE_KINDS, "preference training", tokenizer,
                 policy, build)


def load_unpaired_dataset(source: str, tokenizer: PreTrainedTokenizerBase,
                          policy: TruncationPolicy, *, split: str | None = None,
                          config: str | None = None,
                          ) -> tuple[list[UnpairedExample], TruncationReport]:
    """Labelled completions (KTO); a preference pair gives one desirable and one undesirable."""

    def build(enc: _Encoder, record: Record, kind: RecordKind) -> list[UnpairedExample]:
        if kind is K.UNPAIRED:
            prompt, completions = record.data["prompt"], [record.data["completion"]]
            labels = [parse_label(record)]
        else:
            prompt, *completions = preference_parts(record, kind)
            labels = [True, False]
        fitted = enc.pair(record, kind, prompt, completions)
        if fitted is None:
            return []
        prompt_ids, completion_ids = fitted
        return [UnpairedExample(prompt_ids, ids, label)
                for ids, label in zip(completion_ids, labels)]

    return _load(source, split, config, UNPAIRED_KINDS, "unpaired (KTO) training", tokenizer,
                 policy, build)


def load_prompt_dataset(source: str, tokenizer: PreTrainedTokenizerBase,
                        policy: TruncationPolicy, *, split: str | None = None,
                        config: str | None = None,
                        ) -> tuple[list[PromptExample], TruncationReport]:
    """Prompts to generate from (PPO, online DPO, best-of-n), from any record with a prompt."""

    def build(enc: _Encoder, record: Record, kind: RecordKind) -> list[PromptExample]:
        if kind is K.CONVERSATIONAL:
            prompt = record.data["messages"][:-1]
        elif kind in PREFERENCE_KINDS:
            prompt = preference_parts(record, kind)[0]
        else:
            prompt = record.data["prompt"]
        field = FIELDS_READ[kind][0]
        ids, text = enc.prompt(record, prompt, field)
        fitted = enc.fit_prompt(record, ids, field)
        if fitted is None:
            return []
        # The text carries the fitted ids: generate samples from them, not from the text
        # encoded again (a second BOS before a chat template's own; the cut undone).
        return [PromptExample(fitted, PromptText(text, fitted, prompt, key))]

    key = tokenizer_key(tokenizer)
    return _load(source, split, config, PROMPT_KINDS, "a prompt dataset", tokenizer, policy,
                 build)


def split_train_eval(examples: list[T], eval_fraction: float,
                     seed: int) -> tuple[list[T], list[T]]:
    """Shuffle with ``random.Random(seed)`` and split off ``eval_fraction`` for evaluation.

    At least one eval example when ``eval_fraction > 0`` and there are two or more examples;
    the training part is never empty.
    """
    if not 0 <= eval_fraction < 1:
        raise ConfigError(f"eval fraction {eval_fraction} is out of range",
                          expected="a number from 0 (no eval split) up to, not including, 1")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = 0
    if eval_fraction > 0 and len(examples) >= 2:
        n_eval = min(max(1, round(len(examples) * eval_fraction)), len(examples) - 1)
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]
