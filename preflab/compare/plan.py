"""What ``preflab plan`` counts: memory per method and role from a model's config, as a library
(``plan_memory``, ``render``); the command is ``preflab.commands.plan``. How it counts is
that command's help and docs/plan.md."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, replace

from preflab.compare.plan_arch import (
    Arch,
    activation_bytes,
    head_working_bytes,
    kv_cache_bytes,
    layer_bytes,
    parse_arch,
)
from preflab.errors import ConfigError

PRECISION_BYTES = {  # (trained, frozen, compute): bytes per element (runtime.precision.MODES)
    "fp32": (4, 4, 4), "bf16-mixed": (4, 2, 2), "fp16-mixed": (4, 2, 2), "bf16-true": (2, 2, 2)}
UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
KINDS = {
    "sft": "sft", "rm": "rm", "dpo-copy": "dpo, reference copy",
    "dpo-adapter-off": "dpo, adapter-off", "dpo-precomputed": "dpo, precomputed",
    "simpo-orpo": "simpo / orpo", "ppo-classic": "ppo classic", "ppo-shared": "ppo shared",
    "critic-free": "critic-free rl",
}
"""The ways the planner counts a method's memory, each a row with its label: a method names
the ones it runs as (``preflab.algorithms.Method.memory``)."""
RL_KINDS = ("ppo-classic", "ppo-shared", "critic-free")
"""Rows with a generation phase (a rollout's KV cache) and no pairs."""
NEEDS_LORA = {
    "dpo-adapter-off": "needs --lora-rank > 0 (the reference is the LoRA base, adapters off)",
    "ppo-shared": "needs --lora-rank > 0 (the roles are LoRA adapters on one frozen base)",
}
PRECISION = {
    "fp32": "everything in float32: trained weights, gradients, AdamW's two moments, frozen "
            "roles, activations; no logits are kept (the fused head makes 64 MiB of them at a "
            "time)",
    "bf16-mixed": "float32 master weights, gradients and AdamW's two moments for what trains "
                  "(LoRA adapters and a trained head copy too), and a reference copy as the "
                  "policy's weights; frozen roles (reward, a LoRA base) in bfloat16; matrix "
                  "products under bf16 autocast, activations counted in bfloat16 (the float32 "
                  "residual stream beside them is not, but for the LM head's input, which is "
                  "that stream); no logits are kept (the fused head makes 64 MiB of float32 "
                  "logits at a time)",
    "fp16-mixed": "as bf16-mixed with float16 for bfloat16, and a dynamic loss scaler (a few "
                  "bytes)",
    "bf16-true": "weights, gradients and AdamW's two moments in bfloat16, no float32 master "
                 "copy (updates below ~1/256 of a weight are lost); LoRA adapters (and so their "
                 "gradients and moments) in float32, as PEFT upcasts them; activations in "
                 "bfloat16; no logits are kept (the fused head makes 64 MiB of float32 logits "
                 "at a time)",
}
PRECISIONS = ("auto", *PRECISION_BYTES)


def parse_memory(text: str) -> int:
    """``80GB`` -> 80 * 2**30. K, M, G, T (with or without B or iB) are powers of 2."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?\s*", str(text), re.I)
    value = float(match.group(1)) * UNITS[(match.group(2) or "").lower()] if match else 0
    if value < 1:
        raise ConfigError(f"{text!r} is not a memory size", field="gpu_memory",
                          expected="80GB, 80GiB, 80G, '24 GB' or a number of bytes; "
                                   "GB = GiB = 2^30 bytes")
    return int(value)


def _role(params: int = 0, grads: int = 0, optimizer: int = 0, activations: int = 0) -> dict:
    return {"params": params, "grads": grads, "optimizer": optimizer, "activations": activations,
            "total": params + grads + optimizer + activations}


def _acting(role: dict, saved: int, working: int = 0) -> dict:
    """``role`` with activations: ``saved`` for backward, plus ``working`` memory alive only
    in part of the step (the fused head's chunks, a reference's forward, generation)."""
    out = _role(role["params"], role["grads"], role["optimizer"], saved + working)
    out["activation_parts"] = {"saved": saved, "working": working}
    return out


@dataclass
class _Step:
    """Everything the per-method accounting needs, with the micro-batch left free."""

    arch: Arch
    b: int
    """Bytes per element of the compute dtype: activations, logits, the KV cache."""
    trained: int
    """Bytes per element of trained weights, their gradients and AdamW moments."""
    frozen: int
    """Bytes per element of frozen weights: reference, reward, a LoRA base."""
    rank: int
    targets: list[str] | None
    seq_len: int
    gc: bool
    attention: str
    rollout: int
    response: int

    def adapters(self) -> int:
        return self.arch.lora_params(self.rank, self.targets) if self.rank else 0

    def head_copy(self) -> int:
        """Bytes per element of a LoRA model's trained head copy: float32 under the mixed
        modes (``precision.prepare_trained``), the base's dtype under bf16-true."""
        return self.trained if self.trained == 4 else self.frozen

    def lm(self, trained: bool) -> dict:
        """A causal LM: trained in full, trained as LoRA on a frozen base, or frozen."""
        n, a = self.arch.lm_params(), 4 * self.adapters()
        if not trained:
            return _role(self.frozen * n)
        if self.rank:
            return _role(self.frozen * n + a, a, 2 * a)
        p = self.trained * n
        return _role(p, p, 2 * p)

    def weights(self) -> int:
        """Bytes per element of the policy's weights (trained dtype, or the frozen dtype of a
        LoRA base), and so of its residual stream and its LM head's input."""
        return self.frozen if self.rank else self.trained

    def reference(self) -> int:
        """Bytes of a reference copy: held as the policy's weights are, so at step 0 the two
        compute the same."""
        return self.weights() * self.arch.lm_params()

    def scorer(self, trained: bool) -> dict:
        """A reward/value model: body + H -> 1 head; LoRA keeps the head and a trained copy."""
        n, h = self.arch.body_params() + self.arch.score_params(), self.arch.score_params()
        a = 4 * self.adapters()
        if not trained:
            return _role(self.frozen * n)
        if self.rank:
            copy = self.head_copy() * h
            return _role(self.frozen * n + copy + a, a + copy, 2 * (a + copy))
        p = self.trained * n
        return _role(p, p, 2 * p)

    def saved(self, rows: int, head: str, *, dropout: bool = True) -> int:
        return activation_bytes(self.arch, b=self.b, rows=rows, seq_len=self.seq_len, head=head,
                                lora_rank=self.rank, lora_targets=self.targets,
                                gradient_checkpointing=self.gc, dropout=dropout,
                                attention=self.attention, stream=self.weights())["total"]

    def head_working(self, rows: int, *, grad: bool = True) -> int:
        """The fused LM head's working memory (``plan_arch.head_working_bytes``): the larger of
        its forward's and its backward's, or its forward's alone (``grad`` false). Every pass
        that scores tokens runs it (sft, dpo, kto, the policy's and the reference's in ppo,
        rloo and grpo); the head trains in full fine-tuning (LoRA leaves it frozen)."""
        head = head_working_bytes(self.arch, b=self.b, tokens=rows * self.seq_len,
                                  stream=self.weights(), trains=grad and not self.rank)
        return max(head["forward"], head["backward"]) if grad else head["forward"]

    def reference_forward(self, rows: int) -> int:
        """A no-grad forward: one layer's tensors and one chunk of the fused head, no logits."""
        layer = sum(layer_bytes(self.arch, b=self.b, seq_len=self.seq_len, dropout=False,
                                attention=self.attention).values())
        return layer * rows * self.seq_len + self.head_working(rows, grad=False)

    def generation(self) -> int:
        """KV cache for the rollout, one layer of the prompt's prefill, one step's logits."""
        a, b = self.arch, self.b
        prompt = self.seq_len - self.response
        cache = kv_cache_bytes(a, b=b, rows=self.rollout, seq_len=self.seq_len)
        # a prefill layer at its widest: the residual and normed input, then q, k, v and the
        # output, or the MLP's three I-wide tensors; and the padding mask
        width = 2 * a.hidden + max(4 * a.heads * a.head_dim, 3 * a.intermediate) + prompt
        prefill = self.rollout * prompt * b * width
        return cache + prefill + self.rollout * a.vocab * (b + 12)


def rows() -> dict[str, tuple[str, list[str]]]:
    """``{kind: (label, methods)}``: the rows ``preflab plan`` prints, each a kind some
    registered method declares, in ``KINDS``' order, with the methods that declare it."""
    from preflab.algorithms import registry

    declared: dict[str, list[str]] = {}
    for method in registry().values():
        for kind in method.memory:
            if kind not in KINDS:
                raise ValueError(f"{method.module}: plan kind {kind!r} is not one of "
                                 f"{', '.join(KINDS)}")
            declared.setdefault(kind, []).append(method.name)
    return {kind: (label, declared[kind]) for kind, label in KINDS.items() if kind in declared}


def _method(step: _Step, name: str, B: int) -> dict | None:
    """Roles and phase peaks of one method at micro-batch ``B``; None if it does not apply."""
    if name in NEEDS_LORA and not step.rank:
        return None
    if name == "rm":  # chosen and rejected through the reward model in one forward
        reward = _acting(step.scorer(True), step.saved(2 * B, "scalar"))
        return {"roles": {"reward": reward}, "phases": {"train": reward["total"]}}
    if name in RL_KINDS:
        return _rl(step, name, B)
    rows = B if name == "sft" else 2 * B  # the others: chosen and rejected in one forward
    policy = step.lm(True)
    saved, working = step.saved(rows, "lm"), step.head_working(rows)
    roles = {"policy": _acting(policy, saved, working)}
    held = policy["params"] + policy["grads"] + policy["optimizer"] + saved
    phases = {"train": held + working}
    if name in ("dpo-copy", "dpo-adapter-off"):  # pi_ref runs first, before the policy's graph
        ref_params = step.reference() if name == "dpo-copy" else 0
        ref = step.reference_forward(rows)
        roles["reference"] = _acting(_role(ref_params), 0, ref)
        phases["train"] = ref_params + max(held + working,
                                           policy["params"] + policy["optimizer"] + ref)
    if name == "dpo-precomputed":  # one pass before training, then the reference is freed
        ref_params = 0 if step.rank else step.reference()  # LoRA: adapters off
        roles["reference"] = _role()
        phases["precompute"] = policy["params"] + ref_params + step.reference_forward(rows)
    return {"roles": roles, "phases": phases}


def _rl(step: _Step, name: str, B: int) -> dict:
    """Generation, then policy and value updates one after the other (dropout off); the
    critic-free methods (RLOO, GRPO, REINFORCE++) hold no value model, and their rollout is
    ``--rollout-batch-size`` completions generated at once."""
    if name == "critic-free":
        roles = {"policy": step.lm(True), "reward": step.scorer(False),
                 "reference": _role(step.reference())}
    elif name == "ppo-classic":
        roles = {"policy": step.lm(True), "value": step.scorer(True),
                 "reward": step.scorer(False), "reference": _role(step.reference())}
    else:  # one frozen base (counted under policy) with policy, value and reward adapters
        a, h = 4 * step.adapters(), step.arch.score_params()
        value = a + step.trained * h  # a new head, trained
        roles = {"policy": step.lm(True), "value": _role(value, value, 2 * value),
                 "reward": _role(a + step.frozen * h), "reference": _role()}
    policy_saved = step.saved(B, "lm", dropout=False)
    value_saved = step.saved(B, "scalar", dropout=False) if "value" in roles else 0
    roles["policy"] = _acting(roles["policy"], policy_saved, step.head_working(B))
    if "value" in roles:
        roles["value"] = _acting(roles["value"], value_saved)
    roles["generation"] = _acting(_role(), 0, step.generation())
    params, grads, optimizer = (sum(r[k] for r in roles.values())
                                for k in ("params", "grads", "optimizer"))
    update = max(roles["policy"]["activations"], value_saved)
    return {"roles": roles, "phases": {
        "update": params + grads + optimizer + update,
        "generation": params + optimizer + roles["generation"]["activations"],  # no grads yet
    }}


def _largest(fits, cap: int) -> int:
    """The largest n in 1..cap with ``fits(n)`` (0 if none), by doubling then bisection;
    ``fits`` must be monotone (true up to some n, false after)."""
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= cap and fits(high):
        low, high = high, 2 * high
    high = min(high, cap + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _fitting(step: _Step, name: str, budget: int, batch_size: int) -> dict[str, int]:
    """``max_micro_batch`` under ``budget`` bytes; for PPO also ``max_rollout_batch``, the
    largest rollout whose generation phase fits (it does not depend on the micro-batch)."""
    ppo = name in RL_KINDS

    def peak(B: int) -> int:
        return max(_method(step, name, B)["phases"].values())

    def generation(R: int) -> int:
        return _method(replace(step, rollout=R), name, batch_size)["phases"]["generation"]

    out = {"max_micro_batch": _largest(lambda B: peak(B) <= budget,
                                       step.rollout if ppo else 1 << 20)}
    if ppo:
        out["max_rollout_batch"] = _largest(lambda R: generation(R) <= budget, 1 << 16)
    return out


def plan_memory(config: dict, *, precision: str = "bf16-mixed", lora_rank: int = 0,
                lora_target_modules: list[str] | None = None, seq_len: int = 1024,
                batch_size: int = 4, gradient_checkpointing: bool = False,
                gpu_memory: int | None = None, attention: str = "sdpa",
                rollout_batch_size: int = 64, response_length: int = 48) -> dict:
    """Bytes per method and role for a model ``config`` (the dict of its config.json).

    Returns ``{"model", "settings", "precision", "methods"}``; each applicable method has
    ``roles`` (params, grads, optimizer, activations, total per role), ``phases``, ``peak``,
    ``peak_phase`` and, when ``gpu_memory`` (bytes) is given, ``fits`` and ``max_micro_batch``
    (PPO: also ``max_rollout_batch``, the largest rollout whose generation phase fits).
    """
    arch = parse_arch(config)
    precision = "bf16-mixed" if precision == "auto" else precision
    trained, frozen, compute = PRECISION_BYTES[precision]
    step = _Step(arch, compute, trained, frozen, lora_rank, lora_target_modules or None,
                 seq_len, gradient_checkpointing, attention, rollout_batch_size,
                 response_length)
    methods: dict[str, dict] = {}
    for name, (label, declared_by) in rows().items():
        figures = _method(step, name, batch_size)
        if figures is None:
            methods[name] = {"label": label, "methods": declared_by, "applicable": False,
                             "why": NEEDS_LORA[name]}
            continue
        peak_phase = max(figures["phases"], key=figures["phases"].get)
        entry = {"label": label, "methods": declared_by, "applicable": True, **figures,
                 "peak": figures["phases"][peak_phase], "peak_phase": peak_phase}
        if gpu_memory is not None:
            entry["fits"] = entry["peak"] <= gpu_memory
            entry.update(_fitting(step, name, gpu_memory, batch_size))
        methods[name] = entry
    return {
        "model": {"model_type": arch.model_type, "parameters": arch.lm_params(),
                  "body_parameters": arch.body_params(), "layers": arch.layers,
                  "hidden_size": arch.hidden, "vocab_size": arch.vocab,
                  "lora_parameters": step.adapters()},
        "settings": {"precision": precision,
                     "bytes_per_element": {"trained": trained, "frozen": frozen,
                                           "compute": compute}, "lora_rank": lora_rank,
                     "lora_target_modules": [lin.name for lin in arch.lora_targets(step.targets)]
                     if lora_rank else [], "seq_len": seq_len, "batch_size": batch_size,
                     "gradient_checkpointing": gradient_checkpointing, "attention": attention,
                     "rollout_batch_size": rollout_batch_size, "response_length": response_length,
                     "gpu_memory_bytes": gpu_memory},
        "precision": PRECISION[precision],
        "methods": methods,
    }


COLUMNS = ("params", "grads", "optimizer", "activations", "total")


def _unit(largest: int) -> tuple[str, int]:
    for name, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if largest >= size:
            return name, size
    return "B", 1


def render(plan: dict, *, model: str) -> str:
    """The table ``preflab plan`` prints."""
    m, s = plan["model"], plan["settings"]
    peaks = [e["peak"] for e in plan["methods"].values() if e["applicable"]]
    unit, size = _unit(max(peaks))
    gpu = s["gpu_memory_bytes"]
    lora = "full fine-tuning"
    if s["lora_rank"]:
        lora = (f"LoRA rank {s['lora_rank']} on {', '.join(s['lora_target_modules'])} "
                f"({m['lora_parameters']:,} adapter parameters)")
    checkpointing = "on" if s["gradient_checkpointing"] else "off"
    lines = [
        f"preflab plan: {model} ({m['model_type']}, {m['parameters']:,} parameters, "
        f"{m['layers']} layers, hidden {m['hidden_size']}, vocabulary {m['vocab_size']:,})",
        *textwrap.wrap(
            f"settings: {s['precision']}, {lora}; seq-len {s['seq_len']}, micro-batch "
            f"{s['batch_size']}, gradient checkpointing {checkpointing}, attention "
            f"{s['attention']}; RL rollout {s['rollout_batch_size']} sequences", 100,
            subsequent_indent="  ", break_on_hyphens=False),
        f"GPU memory: {gpu / 2**30:.2f} GiB (GB means GiB, 2^30 bytes)" if gpu else "",
        *textwrap.wrap(f"precision: {plan['precision']}", 100, subsequent_indent="  ",
                       break_on_hyphens=False), "",
    ]
    head = f"{'method':<20} {'role':<11}" + "".join(f"{c:>12}" for c in COLUMNS)
    lines += [head + f"   ({unit})", "-" * len(head)]
    for entry in plan["methods"].values():
        if not entry["applicable"]:
            lines += [f"{entry['label']:<20} {entry['why']}", ""]
            continue
        for i, (role, r) in enumerate(entry["roles"].items()):
            cells = "".join(f"{r[c] / size:>12.2f}" for c in COLUMNS)
            lines.append(f"{entry['label'] if i == 0 else '':<20} {role:<11}{cells}")
        verdict = ""
        if "fits" in entry:
            verdict = (f"{'fits' if entry['fits'] else 'DOES NOT FIT'}, max micro-batch "
                       f"{entry['max_micro_batch']}")
            if "max_rollout_batch" in entry:
                verdict += f", max rollout {entry['max_rollout_batch']}"
        others = [f"{k} {v / size:.2f}" for k, v in entry["phases"].items()
                  if k != entry["peak_phase"]]
        phases = "; ".join([entry["peak_phase"], *others])
        lines.append(f"{'':<20} {'peak':<11}{'':>48}{entry['peak'] / size:>12.2f}   "
                     f"{verdict} ({phases})")
        lines.append("")
    lines += textwrap.wrap(
        "peak: the largest phase of a step (train; dpo precomputed: precompute; ppo and the "
        "methods with no value model: update or generation, whose KV cache and prefill are "
        "estimates), not the sum of the rows. max "
        "micro-batch: the largest --batch-size whose peak fits; max rollout: the largest "
        "--rollout-batch-size whose generation fits. Not counted: the CUDA context and "
        "allocator fragmentation.", 100)
    lines += [f"{e['label']}: {', '.join(e['methods'])}" for e in plan["methods"].values()
              if len(e["methods"]) > 1]
    return "\n".join(lines)
