"""PPO's four roles -- policy, value, reward, reference -- held in one of two memory modes.

The critic-free methods (RLOO, GRPO) hold the same roles less the value (``critic=False``):
three models in ``classic``, one base with the policy (and reward) adapter in ``shared``.

    classic   four separate models (the picture in Ziegler et al. 2019 and most write-ups):
              policy     the causal LM being trained (full, or LoRA on its own base)
              value      a sequence-classification model (body + scalar head), trained
              reward     the trained reward model(s), frozen
              reference  a frozen copy of the initial policy
    shared    one frozen base causal LM ("Hydra", Santacroce et al. 2023):
              policy     LoRA adapter ``default`` on the base (the LM head is the base's)
              value      LoRA adapter ``value`` + a scalar head, trained
              reward     LoRA adapter ``reward`` + the reward model's head, loaded from a reward
                         model trained with LoRA on the same base (``preflab rm --lora-rank``)
              reference  the base with every adapter switched off: no extra bytes

Both modes offer the same methods, so the PPO loop never asks which it has:
``policy_token_logps`` and ``reference_token_logps`` (the response tokens' log-probs through
the fused head, ``logprobs.model_token_logps``: no ``[B, T, V]`` logits), ``values``,
``generator`` (the module to sample from),
``with_reference`` (run a function on the reference), ``tensor_bytes`` (per role, the shared
base counted once: it is attributed to ``policy``).

In shared mode the adapters take turns on one body: ``_activate`` switches the active adapter
and restores which parameters require grad (PEFT's ``set_adapter`` and ``disable_adapter``
change that as a side effect), so the optimizer and checkpoints always see the policy and
value adapters and the value head as trainable, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from preflab import models, rewards
from preflab.errors import ConfigError
from preflab.models.heads import (
    TokenValues,
    body_and_head,
    head_outputs,
    new_scalar_head,
    scores_at_last_token,
)
from preflab.runtime import distributed, memory, precision
from preflab.training import session

MEMORY_MODES = ("classic", "shared")
POLICY_ADAPTER = "default"  # the usual name, so final/adapter/ is a plain PEFT adapter


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere (Huang et al. 2024): log-probs at rollout and update must agree."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    disable_dropout(model)
    return model.eval().requires_grad_(False)


def _forward_token_logps(model, input_ids, attention_mask, keep_from: int = 0, **kwargs):
    """``logprobs.model_token_logps`` of the tokens after position ``keep_from``: ``[B, T -
    keep_from - 1]``; the head runs from ``keep_from`` on (a rollout's prompt makes no
    logits). ``kwargs``: ``scored``, ``temperature``, ``entropy``."""
    from preflab.models.logprobs import model_token_logps

    return model_token_logps(model, input_ids, attention_mask=attention_mask,
                             keep=input_ids.shape[1] - keep_from, **kwargs)


def _params_bytes(params: list[torch.nn.Parameter], optimizer, seen: set[int]) -> dict[str, int]:
    return memory.role_tensor_bytes(params, optimizer, seen=seen)


class ClassicRoles:
    """Four separate models. ``reward_models`` are the frozen models the reward holds."""

    mode = "classic"

    def __init__(self, cfg, run: session.Run, *, ref_path: str, value_path: str | None,
                 pad_token_id: int, reward_models: list[torch.nn.Module]) -> None:
        self.policy = session.load_trainable(cfg, run)
        disable_dropout(self.policy)
        self.reference = _frozen(session.load_reference(cfg, run, ref_path))
        if getattr(cfg, "fsdp", False):  # the reference and reward models stay whole
            distributed.shard(self.policy)
        self.reward_models = reward_models
        self.value = None
        self.trainable = torch.nn.ModuleDict({"policy": self.policy})
        if value_path is None:  # critic-free: three roles
            return
        self.value = models.load_sequence_classifier(
            value_path, pad_token_id=pad_token_id,
            **session.load_options(cfg, run, as_policy=True))
        if cfg.gradient_checkpointing:
            self.value.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora_rank > 0:
            targets = [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()]
            self.value = models.apply_lora(self.value, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                           dropout=cfg.lora_dropout, target_modules=targets or None,
                                           task_type="SEQ_CLS")
        disable_dropout(self.value)
        precision.prepare_trained(self.value, run.precision)
        self._values = TokenValues(self.value)
        if getattr(cfg, "fsdp", False):
            distributed.shard(self._values)
        self.trainable = torch.nn.ModuleDict({"policy": self.policy, "value": self.value})

    @property
    def has_value(self) -> bool:
        return self.value is not None

    def checkpoint_models(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, **({"value": self.value} if self.value is not None else {})}

    def restore_grads(self) -> None:
        pass

    def generator(self) -> torch.nn.Module:
        return models.unwrap(self.policy)

    def policy_token_logps(self, input_ids, attention_mask, keep_from: int = 0, **kwargs):
        return _forward_token_logps(self.policy, input_ids, attention_mask, keep_from, **kwargs)

    @torch.no_grad()
    def reference_token_logps(self, input_ids, attention_mask, keep_from: int = 0, **kwargs):
        return _forward_token_logps(self.reference, input_ids, attention_mask, keep_from,
                                    **kwargs)

    def values(self, input_ids, attention_mask):
        return self._values(input_ids, attention_mask)

    def with_reference(self, fn: Callable):
        return fn(self.reference)

    def final_model(self) -> torch.nn.Module:
        return self.policy

    def save_value(self, out_dir: Path, tokenizer, run: session.Run) -> None:
        """The value model as a sequence-classification model (``final/value/``), written by
        rank 0; every process calls it (a sharded model's weights are gathered)."""
        full = (distributed.full_weights(self.value) if distributed.is_sharded(self.value)
                else None)
        if run.ctx.is_main:
            models.save_model(self.value, tokenizer, out_dir, state_dict=full)

    def tensor_bytes(self, optimizer) -> dict[str, dict[str, int]]:
        seen: set[int] = set()
        reward_params = [p for m in self.reward_models for p in m.parameters()]
        out = {"policy": _params_bytes(list(self.policy.parameters()), optimizer, seen)}
        if self.value is not None:
            out["value"] = _params_bytes(list(self.value.parameters()), optimizer, seen)
        out["reward"] = _params_bytes(reward_params, None, seen)
        out["reference"] = _params_bytes(list(self.reference.parameters()), None, seen)
        return out


def shared_reward_adapter(spec: str, base_path: str, tokenizer) -> tuple[Path | None, str]:
    """``(adapter dir, "")`` when the reward model ``spec`` is a LoRA adapter on ``base_path``
    with the policy's tokenizer, else ``(None, why not)``."""
    adapter = Path(spec) / "adapter"
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        return None, "it was trained without LoRA (no adapter/ beside its weights)"
    base = json.loads(config_file.read_text()).get("base_model_name_or_path") or ""
    if not base or Path(base).resolve() != Path(base_path).resolve():
        return None, f"its adapter's base is {base!r}, not --model {base_path!r}"
    reward_tokenizer = models.load_tokenizer(spec)
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        return None, "its tokenizer differs from the policy's"
    return adapter, ""


class SharedRoles:
    """One frozen base; policy, value and reward as adapters with heads on it."""

    mode = "shared"

    def __init__(self, cfg, run: session.Run, *, reward_adapter: Path | None,
                 value_from_reward: bool, reward_models: list[torch.nn.Module],
                 critic: bool = True) -> None:
        from peft import LoraConfig

        if cfg.lora_rank < 1:
            raise ConfigError("--memory-mode shared holds the policy as a LoRA adapter: "
                              "give --lora-rank N (N >= 1)", field="lora_rank")
        self.peft = session.load_trainable(cfg, run)  # the base + the policy adapter "default"
        self.lm = self.peft.get_base_model()  # the causal LM with LoRA layers injected
        self.body = self.lm.base_model  # the transformer body, LoRA layers included
        hidden = self.lm.config.get_text_config().hidden_size
        dtype, device = run.precision.trained, run.device  # the value head trains
        self.reward_head: torch.nn.Linear | None = None
        value_config = self.peft.peft_config[POLICY_ADAPTER]
        if reward_adapter is not None:
            value_config = self._load_reward_adapter(reward_adapter, hidden,
                                                     run.precision.frozen, device)
        self.value_head: torch.nn.Linear | None = None
        if critic:
            self.peft.add_adapter("value", LoraConfig(**{**value_config.to_dict(),
                                                         "task_type": "CAUSAL_LM"}))
            if value_from_reward and reward_adapter is not None:
                self._copy_adapter("reward", "value")
                self.value_head = torch.nn.Linear(hidden, 1, bias=False).to(device=device,
                                                                            dtype=dtype)
                self.value_head.load_state_dict(self.reward_head.state_dict())
            else:
                self.value_head = new_scalar_head(hidden, dtype=dtype, device=device,
                                                  seed=cfg.seed)
        disable_dropout(self.peft)
        self.reward_models = reward_models  # reward models that could not share the base
        heads = {"value_head": self.value_head} if critic else {}
        self.trainable = torch.nn.ModuleDict({"adapters": self.peft, **heads})
        self._trainable_ids = {
            id(p) for n, p in self.peft.named_parameters()
            if _adapter_of(n) in (POLICY_ADAPTER, "value")
        } | {id(p) for m in heads.values() for p in m.parameters()}
        self._active = ""
        self._activate(POLICY_ADAPTER)
        precision.prepare_trained(self.trainable, run.precision)  # the value adapter too

    def _load_reward_adapter(self, adapter_dir: Path, hidden: int, dtype, device):
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        config = LoraConfig.from_pretrained(str(adapter_dir))
        config.task_type, config.modules_to_save, config.inference_mode = "CAUSAL_LM", None, False
        self.peft.add_adapter("reward", config)
        weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
        head_keys = [k for k in weights if k.split(".")[-2] in ("score", "classifier")]
        if len(head_keys) != 1:
            raise ConfigError("the reward model's adapter holds no scalar head (score)",
                              path=str(adapter_dir))
        head_weight = weights.pop(head_keys[0])
        result = set_peft_model_state_dict(self.peft, weights, adapter_name="reward")
        missing = [k for k in result.missing_keys if ".reward." in k]
        if missing:
            raise ConfigError(f"the reward adapter does not fit the base ({len(missing)} "
                              f"tensors missing, e.g. {missing[0]})", path=str(adapter_dir))
        self.reward_head = torch.nn.Linear(hidden, 1, bias=False).to(device=device, dtype=dtype)
        with torch.no_grad():
            self.reward_head.weight.copy_(head_weight.reshape(1, hidden))
        self.reward_head.requires_grad_(False)
        return config

    def _copy_adapter(self, source: str, target: str) -> None:
        params = dict(self.peft.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if _adapter_of(name) == target:
                    p.copy_(params[name.replace(f".{target}.", f".{source}.")])

    def restore_grads(self) -> None:
        for p in self.peft.parameters():
            p.requires_grad_(id(p) in self._trainable_ids)

    def _activate(self, name: str) -> None:
        if self._active != name:
            self.peft.set_adapter(name)
            self._active = name
            self.restore_grads()

    @property
    def has_value(self) -> bool:
        return self.value_head is not None

    def checkpoint_models(self) -> dict[str, torch.nn.Module]:
        self.restore_grads()
        heads = {"value_head": self.value_head} if self.value_head is not None else {}
        return {"adapters": self.peft, **heads}

    def generator(self) -> torch.nn.Module:
        self._activate(POLICY_ADAPTER)
        return self.lm

    def policy_token_logps(self, input_ids, attention_mask, keep_from: int = 0, **kwargs):
        self._activate(POLICY_ADAPTER)
        return _forward_token_logps(self.lm, input_ids, attention_mask, keep_from, **kwargs)

    @contextlib.contextmanager
    def _adapters_off(self):
        try:
            with self.peft.disable_adapter():
                yield self.lm
        finally:
            self.restore_grads()

    @torch.no_grad()
    def reference_token_logps(self, input_ids, attention_mask, keep_from: int = 0, **kwargs):
        with self._adapters_off() as lm:
            return _forward_token_logps(lm, input_ids, attention_mask, keep_from, **kwargs)

    def values(self, input_ids, attention_mask):
        self._activate("value")
        return head_outputs(self.body, self.value_head, input_ids, attention_mask)

    @torch.no_grad()
    def reward_scores(self, input_ids, attention_mask):
        """The shared reward model's score at each row's last token, ``[B]``."""
        self._activate("reward")
        return scores_at_last_token(self.body, self.reward_head, input_ids, attention_mask)

    def with_reference(self, fn: Callable):
        with self._adapters_off() as lm:
            return fn(lm)

    def save_value(self, out_dir: Path, tokenizer, run: session.Run) -> None:
        """The value role as an ordinary sequence-classification model (``final/value/``):
        the base with the value adapter merged in, and the value head as its ``score``, so a
        later run can start its value model there (``--value-model``). Rank 0 writes it."""
        if not run.ctx.is_main:
            return
        import copy

        from transformers import AutoModelForSequenceClassification

        merged = models.merged_state_dict(self.peft, "value")  # on the CPU, like ``value``
        config = copy.deepcopy(self.lm.config)
        config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
        config.architectures = None
        value = AutoModelForSequenceClassification.from_config(config, dtype=self.lm.dtype)
        prefix = self.lm.base_model_prefix + "."
        state = {k: v for k, v in merged.items() if k.startswith(prefix)}
        _, head = body_and_head(value)
        state[next(n for n, m in value.named_modules() if m is head) + ".weight"] = (
            self.value_head.weight.detach().reshape(head.weight.shape))
        missing, unexpected = value.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"value model export: missing {missing}, unexpected {unexpected}")
        models.save_model(value, tokenizer, out_dir)
        del merged, value
        self._activate(POLICY_ADAPTER)

    def final_model(self) -> torch.nn.Module:
        """The policy alone (value and reward adapters removed): training is over."""
        self._activate(POLICY_ADAPTER)
        for name in ("value", "reward"):
            if name in self.peft.peft_config:
                self.peft.delete_adapter(name)
        self._activate(POLICY_ADAPTER)
        return self.peft

    def tensor_bytes(self, optimizer) -> dict[str, dict[str, int]]:
        seen: set[int] = set()
        by_adapter: dict[str, list] = {POLICY_ADAPTER: [], "value": [], "reward": []}
        for name, p in self.peft.named_parameters():
            by_adapter.get(_adapter_of(name), by_adapter[POLICY_ADAPTER]).append(p)
        reward = by_adapter["reward"] + list(self.reward_head.parameters() if self.reward_head
                                             else [])
        reward += [p for m in self.reward_models for p in m.parameters()]
        # the frozen base is attributed to the policy, counted once
        out = {"policy": _params_bytes(by_adapter[POLICY_ADAPTER], optimizer, seen)}
        if self.value_head is not None:
            out["value"] = _params_bytes(by_adapter["value"] + list(self.value_head.parameters()),
                                         optimizer, seen)
        out["reward"] = _params_bytes(reward, None, seen)
        out["reference"] = {"params": 0, "grads": 0, "optimizer": 0, "total": 0}
        return out


def _adapter_of(param_name: str) -> str | None:
    """``...q_proj.lora_A.value.weight`` -> ``value``; None for a base parameter."""
    parts = param_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("lora_"):
            return parts[i + 1]
    return None



def build_roles(cfg, run: session.Run, tokenizer, *, critic: bool = True):
    """The four roles (three with ``critic=False``: no value) and the training reward
    (``CombinedReward``), in ``cfg.memory_mode``.

    Reads ``cfg.reward``, ``cfg.memory_mode``, ``cfg.model``, ``cfg.ref_model``,
    ``cfg.value_model`` and the shared training flags. The value model starts from the first
    reward model in ``cfg.reward`` unless ``cfg.value_model`` says otherwise; where it cannot
    (another tokenizer), from ``cfg.model``. In shared mode the first reward model that is a
    LoRA adapter on ``cfg.model`` becomes the ``reward`` adapter; any other reward model is
    held as a separate frozen model, with a printed note.
    """
    load = dict(device=run.device, dtype=run.precision.frozen,
                batch_size=cfg.eval_batch_size or cfg.batch_size, allow_pickle=cfg.allow_pickle,
                trust_remote_code=cfg.trust_remote_code,
                attn_implementation=cfg.attn_implementation)
    model_specs = [s for s, _ in rewards.parse_reward_specs(cfg.reward)
                   if rewards.is_reward_model_dir(s)]
    value_model = getattr(cfg, "value_model", "")
    if cfg.memory_mode == "classic":
        reward = rewards.load_reward(cfg.reward, **load)
        if not critic:
            roles = ClassicRoles(cfg, run, ref_path=cfg.ref_model or cfg.model, value_path=None,
                                 pad_token_id=tokenizer.pad_token_id,
                                 reward_models=reward.models())
            return roles, reward
        value_path = value_model or (model_specs[0] if model_specs else cfg.model)
        value_path = rewards.reward_model_path(value_path) or value_path  # a run dir: its final/
        if value_path != cfg.model and (models.load_tokenizer(value_path).get_vocab()
                                        != tokenizer.get_vocab()):
            _note(run, f"the value model cannot start from {value_path} (another tokenizer); "
                       "it starts from --model")
            value_path = cfg.model
        roles = ClassicRoles(cfg, run, ref_path=cfg.ref_model or cfg.model, value_path=value_path,
                             pad_token_id=tokenizer.pad_token_id, reward_models=reward.models())
        return roles, reward
    shared_spec, adapter = None, None
    for spec in model_specs:
        adapter, why = shared_reward_adapter(rewards.reward_model_path(spec), cfg.model, tokenizer)
        if adapter is not None:
            shared_spec = spec
            break
        _note(run, f"reward model {spec} is held as a separate frozen model: {why}")
    if value_model not in ("", cfg.model, shared_spec):
        raise ConfigError("--memory-mode shared: the value adapter starts from the shared reward "
                          "adapter or from the base; --value-model must be one of them or empty",
                          field="value_model")
    roles = SharedRoles(cfg, run, reward_adapter=adapter, reward_models=[],
                        value_from_reward=value_model in ("", shared_spec), critic=critic)
    overrides = {}
    if shared_spec is not None:
        overrides[shared_spec] = rewards.RewardModel(
            tokenizer, roles.reward_scores, device=run.device, batch_size=load["batch_size"],
            max_length=getattr(roles.lm.config, "max_position_embeddings", None))
    reward = rewards.load_reward(cfg.reward, overrides=overrides, **load)
    roles.reward_models = reward.models()
    return roles, reward


def _note(run: session.Run, text: str) -> None:
    if run.ctx.is_main:
        print(f"note: {text}", flush=True)
