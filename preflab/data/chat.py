"""Chat prompts: a list of messages made into the text and token ids a model sees.

One rule, used by every command that turns a prompt into tokens (the data loaders, and
through them ``sft``, ``dpo``, ``kto``, ``rm``, ``online-dpo``, ``bon``, ``ppo``, ``rloo``,
``grpo`` and evaluation; ``preflab sample`` and ``preflab label`` too):

- a text prompt is ``tokenizer(prompt, add_special_tokens=True)`` (a tokenizer that adds BOS
  does so);
- a prompt that is a list of messages is rendered by ``render_chat_prompt``: the tokenizer's
  chat template with ``add_generation_prompt=True``, then tokenized with
  ``add_special_tokens=False``, since the template writes any BOS itself.

``tokenize_prompt`` applies the rule. Its result travels to ``preflab.generation.generate``
as a ``PromptText``: the rendered text (a ``str``, for reward functions and judges) that
also carries the ids, so the policy is sampled from exactly the data layer's ids rather than
from the text encoded again (which would add a second BOS to a template that writes one).

``read_prompts`` reads the prompts of a prompt file as the user wrote them, for ``preflab
sample``: a ``prompt`` field (text or messages), or a ``messages`` record (the messages
before its last assistant reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from preflab.data.readers import Record, excerpt, read_records
from preflab.errors import DataError

NO_TEMPLATE_EXPECTED = ("a chat or instruct model whose tokenizer has a chat_template, or "
                        "prompts (and completions) that are plain strings")


def render_chat_prompt(tokenizer, messages: Sequence[dict], *, generation_prompt: bool = True,
                       path: str | None = None, line: int | None = None,
                       field: str | None = None) -> str:
    """``messages`` rendered with the tokenizer's chat template, as text.

    ``generation_prompt`` (default on) appends the template's start of an assistant reply, as
    for a prompt to sample from; off, the conversation is rendered as it stands (a prompt
    with its reply, for training). The only place preflab calls ``apply_chat_template``.
    ``path``, ``line`` and ``field`` say where the messages come from, for the ``DataError``
    raised when the tokenizer has no chat template or the template fails on them.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the model's tokenizer has no chat template, so a prompt that is a "
                        "list of messages cannot be turned into text", path=path, line=line,
                        field=field, expected=NO_TEMPLATE_EXPECTED)
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as e:  # the template's own checks raise (jinja) errors of its choosing
        # An excerpt: a template may put the record's text into its error message.
        reason = excerpt(" ".join(str(e).split()) or type(e).__name__, limit=80)
        raise DataError(f"the tokenizer's chat template failed on these messages: {reason}",
                        path=path, line=line, field=field) from None


def tokenize_prompt(tokenizer, prompt: str | Sequence[dict], *, path: str | None = None,
                    line: int | None = None, field: str | None = None) -> tuple[list[int], str]:
    """A prompt's token ids (untruncated) and its text, by the rule of the module docstring:
    a text prompt as it is, with special tokens; a list of messages through
    ``render_chat_prompt``, without (the template writes any BOS)."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"]), prompt
    text = render_chat_prompt(tokenizer, prompt, path=path, line=line, field=field)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), text


def tokenizer_key(tokenizer) -> tuple:
    """What must match for ids made by one tokenizer to be right for another: its class,
    name, vocabulary size, the special tokens it adds, and its chat template."""
    return (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", None), len(tokenizer),
            tuple(tokenizer("", add_special_tokens=True)["input_ids"]),
            getattr(tokenizer, "chat_template", None))


class PromptText(str):
    """A prompt's text (what reward functions and judges read) that also carries the ids the
    data layer made of it (``ids``, truncated as the loader truncates), the prompt as the user
    gave it (``source``: the text, or the list of messages) and the ``tokenizer_key`` of the
    tokenizer that made the ids. ``preflab.generation.generate`` feeds ``ids`` to the model
    when its tokenizer has that key, so a chat prompt is never encoded a second time."""

    __slots__ = ("ids", "source", "key")

    def __new__(cls, text: str, ids: Sequence[int], source: Any, key: tuple) -> PromptText:
        self = super().__new__(cls, text)
        self.ids = list(ids)
        self.source = source
        self.key = key
        return self

    def __reduce__(self):  # pickle and deepcopy keep the ids (a plain str would drop them)
        return (PromptText, (str(self), self.ids, self.source, self.key))


def prompt_ids_for(tokenizer, prompt: str, key: tuple | None = None) -> list[int]:
    """The ids to sample ``prompt`` from with ``tokenizer``: a ``PromptText``'s own ids when
    it was made by this tokenizer (``key``: its ``tokenizer_key``, computed once by a caller
    with many prompts), its ``source`` tokenized by ``tokenize_prompt`` when made by another,
    and a plain text's ``tokenizer(text, add_special_tokens=True)``."""
    if isinstance(prompt, PromptText):
        if prompt.key == (key if key is not None else tokenizer_key(tokenizer)):
            return list(prompt.ids)
        return tokenize_prompt(tokenizer, prompt.source)[0]
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class SourcePrompt:
    """A prompt as a prompt file gives it (text or a list of messages) and where it is."""

    prompt: str | list
    record: Record
    field: str  # "prompt" or "messages"

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


def read_prompts(source: str, max_prompts: int = 0, *, allow_empty: bool = False,
                 split: str | None = None, config: str | None = None,
                 split_flag: str | None = None) -> list[SourcePrompt]:
    """The prompt of each record of ``source`` (all, or the first ``max_prompts``), as given.

    A record's ``prompt`` field is a non-empty text or a list of messages that ends with a
    user message; without one, a ``messages`` record gives the messages before its last
    assistant reply (all of them when it ends with a user message). ``allow_empty`` takes an
    empty text prompt too (generation then starts from BOS), as prompt-only records may be. Text and message prompts
    may be mixed: each is tokenized by its own rule (``tokenize_prompt``). ``DataError``
    names the file, line and field of a record with no usable prompt. ``split``, ``config``
    and ``split_flag`` as ``read_records`` takes them.
    """
    from preflab.data.formats import RecordKind, check_prompt_messages, validate

    prompts = []
    for record in read_records(str(source), split=split, config=config, split_flag=split_flag):
        prompt, field = record.data.get("prompt"), "prompt"
        if prompt is None and isinstance(record.data.get("messages"), list):
            messages, field = record.data["messages"], "messages"
            prompt = messages
            if messages and isinstance(messages[-1], dict) and \
                    messages[-1].get("role") == "assistant":
                validate(record, RecordKind.CONVERSATIONAL)  # the turns, as the loaders check
                prompt = messages[:-1]
        if isinstance(prompt, list):
            check_prompt_messages(record, field, prompt)
        elif not isinstance(prompt, str) or not (allow_empty or prompt.strip()):
            shown = ("missing" if prompt is None else "empty" if isinstance(prompt, str)
                     else f"a {type(prompt).__name__}")
            raise DataError(f"the prompt is {shown}", path=record.path, line=record.line,
                            field="prompt", expected="a non-empty text prompt, or a list of "
                            'messages ending with a user message ({"role": "user", '
                            '"content": "..."})')
        prompts.append(SourcePrompt(prompt, record, field))
        if max_prompts and len(prompts) >= max_prompts:
            break
    return prompts


def model_prompts(tokenizer, sources: Sequence[SourcePrompt]) -> list[PromptText]:
    """Each prompt's text and ids for ``tokenizer``: a text as it is, a list of messages
    rendered with its chat template (``tokenize_prompt``); ``DataError`` names the record."""
    key = tokenizer_key(tokenizer)
    out = []
    for source in sources:
        ids, text = tokenize_prompt(tokenizer, source.prompt, path=source.record.path,
                                    line=source.record.line, field=source.field)
        out.append(PromptText(text, ids, source.prompt, key))
    return out
