"""Record formats: which kind a record is (by its fields), and whether its values fit that kind.

The formats are the ecosystem's (TRL's), so datasets made for other tools load unchanged:

    LANGUAGE_MODELING    {"text"}
    PROMPT_COMPLETION    {"prompt", "completion"}             strings, or lists of messages
    CONVERSATIONAL       {"messages"}                         ends with an assistant message
    PREFERENCE           {"prompt", "chosen", "rejected"}     strings, or lists of messages
    IMPLICIT_PREFERENCE  {"chosen", "rejected"}               the shared beginning is the prompt
    UNPAIRED             {"prompt", "completion", "label"}    label: true = desirable
    PROMPT_ONLY          {"prompt"}

A record's kind is the format whose fields are the largest set found in it; other fields are
ignored (the built-in world adds ``chosen_gold`` and ``rejected_gold``). A record that fits two
formats is read as the one its loader accepts, and explicit fields win over a whole chat in
``messages`` (UltraFeedback's ``train_prefs`` carries both; ``resolve_kind``). A message is
``{"role": "system" | "user" | "assistant", "content": str}``; a conversation is an optional
system message, then user and assistant turns alternating, starting with user. A
conversational prompt ends with a user message, and a conversational completion (or
chosen/rejected) continues it and ends with an assistant message.

Implicit prompts (``extract_prompt``): for lists of messages the prompt is the leading
messages both sides share, cut back so that it ends with a user message. For strings it is
the longest common prefix cut back to the last whitespace inside it; the whitespace goes to
the completions (``"the film was good"`` / ``"the film was bad"`` -> ``"the film was"``,
``" good"``, ``" bad"``), which is what BPE tokenizers expect (a space starts a word token).
A preference record whose prompt is a string but whose chosen/rejected are full
conversations (as in UltraFeedback) takes its prompt from the conversations in the same way.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Any

from preflab.data.readers import (
    EXCERPT_CHARS,
    FORMAT_FIELDS,
    RECORD_FIELDS,
    Record,
    excerpt,
    field_names,
)
from preflab.errors import DataError

ROLES = ("system", "user", "assistant")
_MESSAGE = 'an object {"role": "system" | "user" | "assistant", "content": "..."}'
_ORDER = ("an optional system message first, then user and assistant turns alternating, "
          "starting with user")
# Half of a UTF-16 surrogate pair on its own: JSON's "\ud800" escape reads as one, but it is
# no Unicode character, so no tokenizer (nor UTF-8) can take it.
_SURROGATE = re.compile("[\ud800-\udfff]")


class RecordKind(enum.Enum):
    """A record format, named by what it holds; ``fields`` are the fields that identify it."""

    LANGUAGE_MODELING = "language-modeling"
    PROMPT_COMPLETION = "prompt-completion"
    CONVERSATIONAL = "conversational"
    PREFERENCE = "preference"
    IMPLICIT_PREFERENCE = "implicit-preference"
    UNPAIRED = "unpaired"
    PROMPT_ONLY = "prompt-only"

    @property
    def fields(self) -> tuple[str, ...]:
        return _FIELDS[self]

    def describe(self) -> str:
        """``preference {prompt, chosen, rejected}``: the name and fields, for messages."""
        return f"{self.value} {{{', '.join(self.fields)}}}"


_FIELDS = {kind: FORMAT_FIELDS[kind.value] for kind in RecordKind}
ALL_FIELDS = RECORD_FIELDS


def _error(record: Record, message: str, field: str | None = None,
           expected: str | None = None) -> DataError:
    return DataError(message, path=record.path, line=record.line, field=field, expected=expected)


def _a(kind: RecordKind) -> str:
    return f"{'an' if kind.value[0] in 'aeiou' else 'a'} {kind.value}"


def _an(role: Any) -> str:
    """``an 'assistant'``, ``a 'user'``: a role quoted, with its article."""
    return f"{'an' if str(role)[:1] in 'aeio' else 'a'} {role!r}"


def _found(record: Record) -> str:
    return field_names(sorted(map(str, record.data)))


def _describe_all(kinds: Sequence[RecordKind]) -> str:
    return "; ".join(k.describe() for k in kinds)


def _best_matches(record: Record) -> list[RecordKind]:
    present = {k for k, v in record.data.items() if v is not None}
    matches = [k for k in RecordKind if set(k.fields) <= present]
    # {prompt, completion, label} also contains {prompt, completion} and {prompt}: the
    # largest match wins. Two matches that do not contain each other are ambiguous.
    return [k for k in matches if not any(set(k.fields) < set(o.fields) for o in matches)]


def detect_kind(record: Record) -> RecordKind:
    """The kind whose fields are the largest set present (null fields count as absent)."""
    best = _best_matches(record)
    if len(best) == 1:
        return best[0]
    if best:
        raise _error(record, f"the record's fields ({_found(record)}) fit more than one "
                     f"format: {_describe_all(best)}",
                     expected="the fields of exactly one format")
    raise _error(record, f"the record's fields ({_found(record)}) fit no known format",
                 expected=f"the fields of one of: {_describe_all(list(RecordKind))}")


def resolve_kind(record: Record, accepted: Sequence[RecordKind], purpose: str) -> RecordKind:
    """``detect_kind``, checked against the kinds a loader accepts (``purpose`` names it).

    A record that fits several kinds is read as the one kind among them the loader accepts
    (preference pairs that also carry ``messages``); when the loader takes several, the one
    other than the whole chat in ``messages`` (a ``prompt`` beside ``messages`` is the
    prompt). A record that is a field or two
    short of an accepted kind (``{"prompt", "chosen"}`` for preference data) is reported as a
    missing field rather than as another kind.
    """
    best = _best_matches(record)
    kind = best[0] if len(best) == 1 else None
    # Datasets often carry a second format beside the one meant (UltraFeedback's train_prefs
    # has a whole chat in messages beside prompt, chosen and rejected): of the formats a record
    # fits, the one the loader reads; of several, the explicit fields over the whole chat.
    usable = [k for k in best if k in accepted]
    explicit = [k for k in usable if k is not RecordKind.CONVERSATIONAL]
    if kind is None and len(usable) == 1:
        kind = usable[0]
    elif kind is None and len(explicit) == 1:
        kind = explicit[0]
    if kind in accepted:
        return kind  # type: ignore[return-value]
    keys = set(record.data)
    near = max(accepted, key=lambda k: (len(set(k.fields) & keys), -len(k.fields)))
    missing = [f for f in near.fields if record.data.get(f) is None]
    if missing and len(set(near.fields) & keys) > (len(kind.fields) if kind else 0):
        what = "is null" if missing[0] in keys else "is missing"
        raise _error(record, f"the record {what} field {missing[0]!r}, which {_a(near)} "
                     "record needs", field=missing[0],
                     expected=f"the fields {', '.join(near.fields)}")
    if len(best) > 1:
        detect_kind(record)  # raises: the fields are ambiguous
    found = f"{_a(kind)} record" if kind else "a record of no known format"
    raise _error(record, f"this is {found} (fields: {_found(record)}), which {purpose} cannot use",
                 expected=f"one of: {_describe_all(accepted)}")


def parse_label(record: Record, value: Any = None) -> bool:
    """The record's ``label`` as a bool: JSON true/false, or "true"/"false"/0/1 from CSV."""
    value = record.data.get("label") if value is None else value
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise _error(record, f"label is {_show(value)}, not a boolean", field="label",
                 expected="true (desirable) or false (undesirable); 1/0 also accepted")


def validate(record: Record, kind: RecordKind) -> None:
    """Check the types and shapes of ``record``'s fields for ``kind``; raise ``DataError``."""
    for name in kind.fields:
        if record.data.get(name) is None:
            raise _error(record, f"the record has no {name!r} field", field=name,
                         expected=f"the fields {', '.join(kind.fields)}")
    data = record.data
    if kind is RecordKind.LANGUAGE_MODELING:
        _check_text(record, "text")
    elif kind is RecordKind.CONVERSATIONAL:
        _check_conversation(record, [("messages", data["messages"])])
    elif kind in (RecordKind.PROMPT_COMPLETION, RecordKind.UNPAIRED):
        _check_pair(record, "completion")
        if kind is RecordKind.UNPAIRED:
            parse_label(record)
    elif kind is RecordKind.PROMPT_ONLY:
        if isinstance(data["prompt"], list):
            _check_conversation(record, [("prompt", data["prompt"])], prompt_only=True)
        else:
            _check_text(record, "prompt")
    elif kind is RecordKind.PREFERENCE and not (
            isinstance(data["prompt"], str) and isinstance(data["chosen"], list)):
        _check_pair(record, "chosen")
        _check_pair(record, "rejected")
    else:  # implicit preference, or a string prompt beside full conversations
        _check_same_shape(record, "chosen", "rejected")
        if isinstance(data["chosen"], list):
            _check_conversation(record, [("chosen", data["chosen"])])
            _check_conversation(record, [("rejected", data["rejected"])])
        else:
            _check_text(record, "chosen")
            _check_text(record, "rejected")


def _show(value: Any) -> str:
    """A value from the user's file, for a message: a short excerpt of text, else its type."""
    if isinstance(value, str):
        return excerpt(value)
    names = {list: "a list", dict: "an object", bool: "a boolean", type(None): "null"}
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a number too large to show"  # repr() of a huge int is slow, or refused
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(value)
        return f"the number {text}" if len(text) <= EXCERPT_CHARS else "a number"
    return names.get(type(value), f"a {type(value).__name__}")


def _check_unicode(record: Record, field: str, value: str) -> None:
    """Refuse a lone surrogate, which would reach the tokenizer as an untyped error."""
    bad = _SURROGATE.search(value)
    if bad:
        raise _error(record, f"the text holds a lone surrogate {bad.group()!r} at character "
                     f"{bad.start() + 1}, which is not a Unicode character", field=field,
                     expected="valid Unicode text (in JSON, a \\ud800-\\udfff escape only as "
                              "half of a surrogate pair)")


def _check_text(record: Record, name: str, *, allow_empty: bool = False) -> None:
    value = record.data[name]
    if not isinstance(value, str):
        raise _error(record, f"{name} is {_show(value)}, not a string", field=name,
                     expected="a string" + (" or a list of messages" if name != "text" else ""))
    if not allow_empty and not value.strip():
        raise _error(record, f"empty {name}", field=name, expected="non-empty text")
    _check_unicode(record, name, value)


def _check_same_shape(record: Record, first: str, second: str) -> None:
    a, b = record.data[first], record.data[second]
    if isinstance(a, list) != isinstance(b, list):
        raise _error(record, f"{first} is {_show(a)} but {second} is {_show(b)}",
                     field=second if isinstance(a, list) else first,
                     expected=f"{first} and {second} both strings, or both lists of messages")


def _check_pair(record: Record, completion: str) -> None:
    """A prompt and one completion: both text, or a conversation and its continuation."""
    _check_same_shape(record, "prompt", completion)
    if isinstance(record.data["prompt"], list):
        _check_conversation(record, [("prompt", record.data["prompt"]),
                                     (completion, record.data[completion])])
    else:
        _check_text(record, "prompt", allow_empty=True)
        _check_text(record, completion)


def check_prompt_messages(record: Record, field: str, messages: Any) -> None:
    """Check that ``messages`` (``record``'s ``field``, or its start) is a prompt: a list of
    well-formed messages in turn order that ends with a user message; raise ``DataError``."""
    _check_conversation(record, [(field, messages)], prompt_only=True)


def _check_conversation(record: Record, parts: list[tuple[str, Any]], *,
                        prompt_only: bool = False) -> None:
    """Check message shapes and turn order across ``parts`` read as one conversation.

    ``parts`` is ``[(field, messages), ...]``: a prompt and its completion are checked as
    one conversation, but a problem is named by its own field (``chosen[0].role``).
    A prompt (the first part when there are two, or the only part when ``prompt_only``)
    must end with a user message; the whole conversation otherwise ends with assistant.
    """
    previous: str | None = None
    for part, (field, messages) in enumerate(parts):
        if not isinstance(messages, list):
            raise _error(record, f"{field} is {_show(messages)}, not a list of messages",
                         field=field, expected=f"a list of messages, each {_MESSAGE}")
        if not messages:
            raise _error(record, f"{field} is an empty list of messages", field=field,
                         expected="at least one message")
        for i, message in enumerate(messages):
            name = f"{field}[{i}]"
            if not isinstance(message, dict):
                raise _error(record, f"message is {_show(message)}, not an object", field=name,
                             expected=_MESSAGE)
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise _error(record, f"message role is {_show(role)}", field=f"{name}.role",
                             expected="one of system, user, assistant")
            if not isinstance(content, str):
                raise _error(record, f"message content is {_show(content)}, not a string",
                             field=f"{name}.content", expected="a string")
            _check_unicode(record, f"{name}.content", content)
            allowed = ("system", "user") if previous is None else (
                ("assistant",) if previous == "user" else ("user",))
            if role not in allowed:
                what = ("the conversation starts with " + _an(role)) if previous is None else (
                    f"{_an(role)} message follows {_an(previous)}")
                raise _error(record, f"roles out of order: {what} message",
                             field=f"{name}.role",
                             expected=f"{' or '.join(map(repr, allowed))} here: {_ORDER}")
            previous = role
        is_prompt = prompt_only or (len(parts) > 1 and part == 0)
        last = part == len(parts) - 1
        if (is_prompt and previous != "user") or (last and not is_prompt and previous != "assistant"):
            want = "user" if is_prompt else "assistant"
            raise _error(record, f"the conversation in {field!r} ends with {_an(previous)} message",
                         field=field, expected=f"a {'prompt' if is_prompt else 'conversation'} "
                                               f"that ends with {_an(want)} message")


def _turns(messages: list) -> list[tuple[Any, Any]]:
    """A conversation as what a chat template renders of it; other keys do not count."""
    return [(m.get("role"), m.get("content")) for m in messages]


def _same_response(chosen: Any, rejected: Any) -> bool:
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _turns(chosen) == _turns(rejected)
    return chosen == rejected


def is_identical_pair(record: Record) -> bool:
    """Whether a validated preference record's chosen and rejected are the same response.

    Such a pair states no preference, whether or not it has a ``prompt`` field; the loaders
    skip it and count it in their report.
    """
    return _same_response(record.data["chosen"], record.data["rejected"])


def extract_prompt(record: Record, chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Split ``(chosen, rejected)`` into ``(prompt, chosen_rest, rejected_rest)``.

    See the module docstring for the rule; raise ``DataError`` where no prompt is shared.
    """
    if _same_response(chosen, rejected):
        raise _error(record, "chosen and rejected are identical", field="rejected",
                     expected="a rejected response that differs from the chosen one")
    no_prompt = ("a 'prompt' field, or chosen and rejected that begin with the same prompt")
    if isinstance(chosen, list):
        chosen_turns, rejected_turns = _turns(chosen), _turns(rejected)
        shared = 0
        while (shared < min(len(chosen), len(rejected))
               and chosen_turns[shared] == rejected_turns[shared]):
            shared += 1
        # Cut back to a user message, so each side continues with an assistant turn.
        while shared > 0 and chosen[shared - 1].get("role") != "user":
            shared -= 1
        if shared == 0:
            raise _error(record, "chosen and rejected share no leading user message, so no "
                         "prompt can be taken from them", field="chosen", expected=no_prompt)
        return chosen[:shared], chosen[shared:], rejected[shared:]
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    cut = max((i for i in range(common) if chosen[i].isspace()), default=0)
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1  # a run of spaces or newlines all goes to the completions
    if not chosen[:cut].strip():
        raise _error(record, "chosen and rejected do not begin with a shared prompt (no "
                     "common words before they differ)", field="chosen", expected=no_prompt)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def preference_parts(record: Record, kind: RecordKind) -> tuple[Any, Any, Any]:
    """``(prompt, chosen, rejected)`` of a validated PREFERENCE or IMPLICIT_PREFERENCE record."""
    data = record.data
    if kind is RecordKind.PREFERENCE and not (
            isinstance(data["prompt"], str) and isinstance(data["chosen"], list)):
        return data["prompt"], data["chosen"], data["rejected"]
    return extract_prompt(record, data["chosen"], data["rejected"])
