"""A local causal LM as a judge: which of two answers does it say is better?

The judge renders the template (``preflab.judges.template``) with the two completions and
reads the model's next-token distribution at the end of it. Of the whole vocabulary only
the two answer tokens count: ``p_A = softmax([l_A, l_B])[0] = sigmoid(l_A - l_B)``, where
``l_A`` and ``l_B`` are the logits of the first token of " A" and " B" as the tokenizer
writes them right after the template.

Language models prefer one position over the other (Zheng et al. 2023, "Judging LLM-as-a-
judge"), so every pair is asked in both orders, and the two answers are averaged::

    P(a better) = (p_A(a, b) + p_B(b, a)) / 2,     p_B(b, a) = 1 - p_A(b, a)

A judge that always says "A" whatever it is shown has ``p_A(a, b) = p_A(b, a) = c`` and
gives exactly 1/2; a judge that swaps its answer when the completions swap keeps its full
confidence. The formula also gives ``P(b better) = 1 - P(a better)``, the contract every
judge keeps.

Rows are left-padded with position ids counted over real tokens
(``preflab.models.logprobs.position_ids_from_attention_mask``), so padding changes nothing, and
only the last position's logits are computed where the model supports ``logits_to_keep``.
A rendered question longer than the model's context keeps its last tokens (counted in
``truncated``): the answer is read at the end.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from preflab.errors import ConfigError
from preflab.judges.cache import fingerprint
from preflab.judges.template import DEFAULT_ANSWERS, DEFAULT_TEMPLATE, check_template, render


def answer_token_ids(tokenizer, context: str, answers: tuple[str, str]) -> tuple[int, int]:
    """The first token of each answer as the tokenizer writes it right after ``context``
    (after a space, unless the context ends in whitespace)."""
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])

    base = ids(context)
    sep = "" if context[-1:].isspace() else " "
    found = []
    for answer in answers:
        full = ids(context + sep + answer)
        k = 0
        while k < min(len(base), len(full)) and base[k] == full[k]:
            k += 1
        if k >= len(full):
            raise ConfigError(f"the judge answer {answer!r} adds no token after the template",
                              field="judge_answers")
        found.append(full[k])
    unk = getattr(tokenizer, "unk_token_id", None)
    if found[0] == found[1] or unk in found:
        raise ConfigError(
            f"the judge model's tokenizer does not tell the answers {answers[0]!r} and "
            f"{answers[1]!r} apart (token ids {found[0]} and {found[1]}"
            f"{', the unknown token' if unk in found else ''})", field="judge_answers",
            expected="two answers whose first tokens differ and are in the model's vocabulary "
                     "(--judge-answers)")
    return found[0], found[1]


def lm_identity(path: str, template: str, answers: tuple[str, str]) -> str:
    """What the answers of the LM judge at ``path`` depend on (known before it loads)."""
    return f"lm|{fingerprint(path)}|answers={','.join(answers)}|template={template}"


class LMJudge:
    """``judge(prompts, a, b) -> P(a better)`` from a causal LM ``model`` and its tokenizer."""

    def __init__(self, model, tokenizer, *, template: str = DEFAULT_TEMPLATE,
                 answers: tuple[str, str] = DEFAULT_ANSWERS, batch_size: int = 8,
                 max_length: int | None = None, identity: str = "lm") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = check_template(template)
        self.answers = tuple(answers)
        self.batch_size = batch_size
        config = getattr(model, "config", None)
        self.max_length = max_length or getattr(config, "max_position_embeddings", None)
        self.identity = identity
        self.truncated = 0
        self.answer_ids = answer_token_ids(tokenizer, render(template, "", "", "", answers),
                                           self.answers)
        forward = inspect.signature(model.forward).parameters
        self._last_only = "logits_to_keep" in forward

    @classmethod
    def from_pretrained(cls, path: str, *, template: str = DEFAULT_TEMPLATE,
                        answers: tuple[str, str] = DEFAULT_ANSWERS, batch_size: int = 8,
                        device: str = "auto", dtype: str = "auto", allow_pickle: bool = False,
                        trust_remote_code: bool = False) -> LMJudge:
        from preflab import models

        dev = models.resolve_device(device)
        tokenizer = models.load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = models.load_causal_lm(path, dtype=models.resolve_dtype(dtype, dev), device=dev,
                                      allow_pickle=allow_pickle,
                                      trust_remote_code=trust_remote_code)
        model.eval().requires_grad_(False)
        return cls(model, tokenizer, template=template, answers=answers, batch_size=batch_size,
                   identity=lm_identity(path, template, answers))

    def _encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        if self.max_length and len(ids) > self.max_length:
            self.truncated += 1
            ids = ids[-self.max_length:]
        return ids

    def first_probabilities(self, prompts: Sequence[str], first: Sequence[str],
                            second: Sequence[str]) -> list[float]:
        """``p_A``: the probability that the model answers label A (``first`` shown as A),
        normalised over the two answer tokens."""
        import torch

        from preflab.models.logprobs import position_ids_from_attention_mask

        rows = [self._encode(render(self.template, p, x, y, self.answers))
                for p, x, y in zip(prompts, first, second)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        answer_ids = torch.tensor(self.answer_ids, device=device)
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                width = max(len(r) for r in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, ids in enumerate(chunk):  # left padding: every row ends at the answer
                    input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                    mask[i, width - len(ids):] = 1
                kwargs = {"logits_to_keep": 1} if self._last_only else {}
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                    position_ids=position_ids_from_attention_mask(mask).to(device),
                                    use_cache=False, **kwargs).logits[:, -1, :]
                pair = logits.index_select(-1, answer_ids).double()
                out.extend(torch.sigmoid(pair[:, 0] - pair[:, 1]).cpu().tolist())
        return out

    def __call__(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        n = len(prompts)
        prompts, a, b = list(prompts), list(a), list(b)
        p = self.first_probabilities(prompts + prompts, a + b, b + a)  # both orders, one pass
        # (p_A(a,b) + 1 - p_A(b,a)) / 2, written so that equal answers give exactly 1/2
        return [0.5 + (p[i] - p[n + i]) / 2 for i in range(n)]
