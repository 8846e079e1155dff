"""Saving a LoRA model: the merged weights equal PEFT's ``merge_and_unload``, the model being
saved is left as it was, and no second copy of the base is made on the model's device."""

from __future__ import annotations

import copy
import json
import weakref
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from preflab import models
from preflab.models.tiny import build_random_causal_lm

VOCAB = 40
IDS = torch.tensor([[1, 5, 6, 7, 9, 2], [0, 0, 1, 9, 10, 2]])
MASK = (IDS != 0).long()


def lora_model(arch: str = "llama", *, task: str = "CAUSAL_LM", dtype=torch.float32,
               tie: bool = False, num_layers: int = 2, rank: int = 4):
    """A tiny random model with LoRA, its adapters (and any ``modules_to_save`` copy) made
    non-zero, so that merging changes every adapted weight."""
    model = build_random_causal_lm(arch, VOCAB, num_layers=num_layers, tie_word_embeddings=tie)
    if task == "SEQ_CLS":  # PEFT wraps the `score` head in modules_to_save
        config = copy.deepcopy(model.config)
        config.num_labels, config.architectures = 1, None
        model = AutoModelForSequenceClassification.from_config(config)
    peft_model = models.apply_lora(model.to(dtype), rank=rank, task_type=task)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return peft_model.eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits.float()


class _Tokenizer:
    def save_pretrained(self, out) -> None:
        pass


CASES = {
    "llama": dict(),
    "tied-embeddings": dict(tie=True),
    "gpt2-conv1d": dict(arch="gpt2"),  # fan_in_fan_out: Conv1D stores weights transposed
    "seq-cls-modules-to-save": dict(task="SEQ_CLS"),
    "bfloat16": dict(dtype=torch.bfloat16),  # LoRA weights in float32 (PEFT upcasts them)
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_weights_equal_merge_and_unload(case, tmp_path):
    """``out/`` holds, tensor by tensor and in the base's dtype, what ``merge_and_unload``
    gives; the same files (names, config) as writing that merged model; and it loads as a
    model whose logits are that model's and (in float32) the LoRA model's."""
    model = lora_model(**CASES[case])
    merged = copy.deepcopy(model).merge_and_unload()
    want = merged.state_dict()
    merged.save_pretrained(tmp_path / "before")
    models.save_model(model, _Tokenizer(), tmp_path / "out")

    got = load_file(tmp_path / "out/model.safetensors")
    assert got.keys() == load_file(tmp_path / "before/model.safetensors").keys()
    assert not any("lora_" in k or "base_layer" in k or "modules_to_save" in k for k in got)
    for key, tensor in got.items():
        assert tensor.dtype == want[key].dtype, key
        torch.testing.assert_close(tensor, want[key], atol=1e-6, rtol=0, msg=key)
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config == json.loads((tmp_path / "before/config.json").read_text())
    assert (tmp_path / "out/adapter/adapter_model.safetensors").is_file()

    auto = AutoModelForSequenceClassification if "seq-cls" in case else AutoModelForCausalLM
    reloaded = logits(auto.from_pretrained(tmp_path / "out").eval())
    assert torch.equal(reloaded, logits(auto.from_pretrained(tmp_path / "before").eval()))
    if CASES[case].get("dtype") != torch.bfloat16:  # there merging rounds to bfloat16
        torch.testing.assert_close(reloaded, logits(model), atol=1e-5, rtol=1e-5)


def test_merged_state_dict_of_a_named_adapter():
    """``adapter_name`` merges that adapter, active or not, as ``merge_and_unload`` does."""
    from peft import LoraConfig

    model = lora_model()
    model.add_adapter("value", LoraConfig(**{**model.peft_config["default"].to_dict(),
                                             "init_lora_weights": False}))
    want = copy.deepcopy(model).merge_and_unload(adapter_names=["value"]).state_dict()
    got = models.merged_state_dict(model, "value")
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=0, msg=key)
    default = models.merged_state_dict(model)
    assert not torch.equal(default["model.layers.0.self_attn.q_proj.weight"],
                           got["model.layers.0.self_attn.q_proj.weight"])


def test_saving_leaves_the_model_as_it_was(tmp_path):
    """Every weight bitwise the same, still a PEFT model with the same adapter active and the
    same trainable parameters, nothing merged, and the same logits."""
    model = lora_model(task="SEQ_CLS")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want = logits(model)
    models.save_model(model, _Tokenizer(), tmp_path / "out")
    assert models.is_peft_model(model) and model.active_adapters == ["default"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert all(torch.equal(after[n], p) for n, p in before.items())
    assert not any(getattr(m, "merged", False) for m in model.modules())
    assert torch.equal(logits(model), want)


class DeviceBytes(TorchDispatchMode):
    """Counts the bytes of the storages that operations create on ``meta`` while it is on:
    ``live`` now, ``peak`` the most at once. A storage counts until it is freed; a view or an
    in-place result is no new storage. The meta device stands in for a GPU (its tensors have
    sizes but no data, so the CPU-only test can tell the model's device from the CPU): a copy
    from it to the CPU gives zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.sizes: dict[int, int] = {}

    def _freed(self, key: int) -> None:
        self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if (func is torch.ops.aten._to_copy.default and source is not None and source.is_meta
                and kwargs.get("device") == torch.device("cpu")):
            return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        out = func(*args, **kwargs)
        inputs = [t.untyped_storage() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)]
        for tensor in tree_leaves(out):
            if not (isinstance(tensor, torch.Tensor) and tensor.is_meta):
                continue
            storage = tensor.untyped_storage()
            if id(storage) in self.sizes or any(storage is s for s in inputs):
                continue
            self.sizes[id(storage)] = storage.nbytes()
            weakref.finalize(storage, self._freed, id(storage))
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        return out


def test_saving_makes_no_second_copy_of_the_base(tmp_path, monkeypatch):
    """No copy of the model is made, and at most a few weights' worth of new tensors (beside
    the adapter's own) live on the model's device at once: on a GPU the base does not fit
    twice. Copying the model and merging the copy (``merge_and_unload``) fails both."""
    deepcopy = copy.deepcopy

    def no_module_copies(x, *args, **kwargs):
        assert not isinstance(x, torch.nn.Module), "save_model copied the model"
        return deepcopy(x, *args, **kwargs)

    model = lora_model(num_layers=4, rank=2)
    with monkeypatch.context() as patch:
        patch.setattr(copy, "deepcopy", no_module_copies)
        models.save_model(model, _Tokenizer(), tmp_path / "cpu")

    model.to("meta")
    weights = [p for n, p in model.named_parameters() if "lora_" not in n]
    adapter = sum(p.nbytes for n, p in model.named_parameters() if "lora_" in n)
    largest, total = max(p.nbytes for p in weights), sum(p.nbytes for p in weights)
    bound = 3 * largest + adapter  # (PEFT's adapter save holds one copy of the adapter)
    assert bound < total / 3  # the model is big enough for the bound to tell
    with DeviceBytes() as device:
        models.save_model(model, _Tokenizer(), tmp_path / "meta")
    assert device.peak <= bound, (device.peak, bound, total)
    assert device.live == 0
    assert load_file(tmp_path / "meta/model.safetensors").keys() == load_file(
        tmp_path / "cpu/model.safetensors").keys()


def _value_model_as_before(roles, tokenizer):
    """The value model that ``SharedRoles.save_value`` wrote before it merged layer by layer:
    a copy of the PEFT model with the value adapter merged in, and the value head as its
    score."""
    from preflab.models.heads import body_and_head

    merged = copy.deepcopy(roles.peft).merge_and_unload(adapter_names=["value"])
    config = copy.deepcopy(merged.config)
    config.num_labels, config.pad_token_id, config.architectures = 1, tokenizer.pad_token_id, None
    value = AutoModelForSequenceClassification.from_config(config, dtype=merged.dtype)
    prefix = merged.base_model_prefix + "."
    state = {k: v for k, v in merged.state_dict().items() if k.startswith(prefix)}
    _, head = body_and_head(value)
    state[next(n for n, m in value.named_modules() if m is head) + ".weight"] = (
        roles.value_head.weight.detach().reshape(head.weight.shape))
    value.load_state_dict(state, strict=False)
    return value.eval()


def test_shared_value_export_is_unchanged(tiny_model_dir, tiny_tokenizer, tmp_path):
    """``final/value`` of shared mode: the same weights and scores as before, and the roles'
    model untouched (the policy adapter active again)."""
    from preflab.rl import roles as roles_module
    from preflab.runtime.precision import MODES
    from preflab.training import session

    cfg = SimpleNamespace(model=str(tiny_model_dir), allow_pickle=False, trust_remote_code=False,
                          gradient_checkpointing=False, lora_rank=2, lora_alpha=0.0,
                          lora_dropout=0.0, lora_target_modules="", seed=0, learning_rate=1e-5,
                          attn_implementation="auto")
    run = session.Run(config=cfg, command="ppo", ctx=SimpleNamespace(is_main=True),
                      device=torch.device("cpu"), precision=MODES["fp32"], dir=tmp_path)
    roles = roles_module.SharedRoles(cfg, run, reward_adapter=None, value_from_reward=False,
                                     reward_models=[])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in roles.peft.named_parameters():
            if "lora_B" in name:  # both adapters, each its own values
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    before = {n: p.detach().clone() for n, p in roles.peft.named_parameters()}
    want = _value_model_as_before(roles, tiny_tokenizer)

    roles.save_value(tmp_path / "value", tiny_tokenizer, run)
    got = load_file(tmp_path / "value/model.safetensors")
    assert got.keys() == want.state_dict().keys()
    for key, tensor in want.state_dict().items():
        torch.testing.assert_close(got[key], tensor, atol=1e-6, rtol=0, msg=key)
    value = AutoModelForSequenceClassification.from_pretrained(tmp_path / "value").eval()
    assert value.config.pad_token_id == tiny_tokenizer.pad_token_id
    torch.testing.assert_close(logits(value), logits(want), atol=1e-6, rtol=0)
    assert all(torch.equal(p, before[n]) for n, p in roles.peft.named_parameters())
    assert roles.peft.active_adapters == [roles_module.POLICY_ADAPTER]
