"""``preflab plan``: GPU memory per method and role, from a model's ``config.json`` or the
metadata of a ``.gguf`` file, for the five families it counts (Llama, Mistral, Qwen2, GPT-2,
GPT-NeoX; any other ``model_type`` is refused with exit 2).

    preflab plan --model CONFIG_DIR_OR_ID [--gpu-memory 80GB] [--lora-rank 16] [--precision P]
                 [--seq-len 1024 --batch-size 4] [--gradient-checkpointing]

For each method (sft, rm, dpo with each way of holding the reference, simpo/orpo, ppo classic
and shared, the RL methods with no value model: one row per way of counting that the methods
declare, ``preflab.algorithms``) and each role (policy, reference, reward, value, generation)
it counts the bytes of parameters, gradients, AdamW state and activations, says whether the
method's peak fits ``--gpu-memory``, and finds the largest micro-batch that does. ``plan_memory`` is the same
as a library call, for the compare report.

How preflab trains, which is what the planner counts (``PRECISION``, per ``--precision``, as
``preflab.runtime.precision`` holds them): trained weights, their gradients and AdamW's two
moments (``torch.optim.AdamW``) in the trained dtype (float32 for fp32 and the mixed modes,
where they are the master weights; bfloat16 for bf16-true); frozen roles (reference, reward,
a LoRA model's base) in the frozen dtype, but a reference copy as the policy's weights are;
LoRA adapters, and a trained copy of a head, in
float32 under the mixed modes (bf16-true keeps the head copy in bfloat16, and PEFT's
``autocast_adapter_dtype`` keeps the adapters in float32); activations in the compute dtype
(autocast's bf16/fp16 under the mixed modes). Reward and value models are
the body plus a scalar head ``H -> 1`` (no LM head); with LoRA, PEFT keeps the original head
and a trained copy. DPO, RM, SimPO and ORPO put chosen and rejected through the model in one
forward (2 x batch rows); PPO's forwards take --batch-size rows of --seq-len (prompt + response)
with dropout off, and generation holds a KV cache for --rollout-batch-size prompts.

A method's total is its peak over the phases of a step, not a sum of its rows:

    train      params + grads + optimizer + saved activations + the fused LM head's working
               memory, the larger of its forward's and its backward's (``preflab.models.fused_head``:
               no [B, T, V] logits are kept or made; about 64 MiB of float32 logits at a time,
               with the head weight's gradient when it trains:
               ``plan_arch.head_working_bytes``); or, if larger, params + optimizer + a live
               reference's forward (one layer's tensors and one chunk of its head), which runs
               first, before the policy's graph exists (plus the reference's weights in both)
    precompute (dpo precomputed) the policy's and the reference's weights + the reference's
               forward; the reference is freed before training
    update     (ppo) params + grads + optimizer + the larger of the policy's and the value's
               training forward (one after the other, dropout off; ppo's single pass, one
               epoch of one minibatch in one micro-batch, holds both: not counted)
    generation (ppo) params + optimizer + KV cache 2 L n_kv hd b x rollout x seq-len + the
               widest layer of the prompt's prefill + one sampling step's logits (an estimate);
               gradients are freed by then

Activations are ``plan_arch.activation_bytes`` (formulas in that module's docstring). Not
counted: the CUDA context and allocator fragmentation (leave a GiB or two), data and
tokenizer, PPO's rollout buffers (a few floats per response token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from preflab.compare.plan import PRECISIONS, parse_memory, plan_memory, render
from preflab.compare.plan_arch import read_config
from preflab.config import arg, parse_config
from preflab.errors import ConfigError


@dataclass
class PlanConfig:
    """``preflab plan``: the model, the GPU and the shape of a training step."""

    REPLACED = {  # not a field (no annotation)
        "dtype": "--dtype is replaced by --precision, as on the training commands: float32 is "
                 "fp32, bfloat16 (no float32 master copy) is bf16-true; bf16-mixed, the "
                 "default, counts float32 master weights and AdamW state (docs/precision.md)"}

    model: str = arg("", "A model directory, its config.json, a .gguf file or a hub id: only "
                     "the config (a GGUF file's metadata) is read, never weights.")
    gpu_memory: str = arg("80GB", "Memory of one GPU: 80GB, 80GiB, 80G, '24 GB' or bytes. GB "
                          "and G mean GiB (2^30 bytes), as GPU vendors quote memory.")
    precision: str = arg("bf16-mixed", "How training holds each tensor, as the training "
                         "commands' --precision: fp32, bf16-mixed, fp16-mixed, bf16-true; auto "
                         "= bf16-mixed (preflab's choice on a GPU).", choices=PRECISIONS)
    lora_rank: int = arg(0, "LoRA rank; 0 plans full fine-tuning.")
    lora_target_modules: str = arg("", "Comma-separated layers to adapt; empty: every linear "
                                   "layer in the blocks (preflab's default).")
    seq_len: int = arg(1024, "Tokens per sequence: prompt + completion (PPO: prompt + response).")
    batch_size: int = arg(4, "Micro-batch: sequences per forward (DPO, RM, SimPO, ORPO run 2 x "
                          "this: chosen and rejected).")
    gradient_checkpointing: bool = arg(False, "Plan with activation checkpointing of each layer.")
    attention: str = arg("sdpa", "Attention kernel: sdpa (fused, no T x T scores kept) or eager.",
                         choices=("sdpa", "eager"))
    rollout_batch_size: int = arg(64, "RL methods: sequences generated at once, for the "
                                  "generation KV cache (PPO: prompts; RLOO, GRPO: prompts x "
                                  "completions per prompt).")
    response_length: int = arg(48, "RL methods: response tokens within --seq-len (the rest is "
                               "the prompt, prefilled at once in generation).")
    json: str = arg("", "Also write every figure to this JSON file.")

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("--model is required", field="model")
        for name, low in (("lora_rank", 0), ("seq_len", 2), ("batch_size", 1),
                          ("rollout_batch_size", 1), ("response_length", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}", field=name)
        if self.response_length >= self.seq_len:
            raise ConfigError("--response-length must be below --seq-len (the prompt is the rest)",
                              field="response_length")
        parse_memory(self.gpu_memory)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PlanConfig, argv, prog="preflab plan", description=__doc__)
    gpu = parse_memory(cfg.gpu_memory)
    targets = [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()]
    plan = plan_memory(read_config(cfg.model), precision=cfg.precision, lora_rank=cfg.lora_rank,
                       lora_target_modules=targets, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                       gradient_checkpointing=cfg.gradient_checkpointing, gpu_memory=gpu,
                       attention=cfg.attention, rollout_batch_size=cfg.rollout_batch_size,
                       response_length=cfg.response_length)
    print(render(plan, model=cfg.model))
    if cfg.json:
        try:
            Path(cfg.json).write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the JSON file: {exc.strerror}",
                              path=cfg.json) from None
    return 0
