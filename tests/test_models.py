"""Model loading, LoRA targets across architectures, safe loading."""

from __future__ import annotations

import shutil

import pytest
import torch

from preflab import models
from preflab.errors import ModelLoadError
from preflab.models.tiny import build_random_causal_lm

EXPECTED_TARGETS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
    "gpt_neox": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
}


@pytest.mark.parametrize("arch", sorted(EXPECTED_TARGETS))
def test_lora_targets_and_training_step(arch):
    model = build_random_causal_lm(arch, vocab_size=40, hidden_size=32, num_layers=2, num_heads=4)
    assert set(models.find_lora_targets(model)) == EXPECTED_TARGETS[arch]
    peft_model = models.apply_lora(model, rank=4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(0, 40, (2, 8))
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in peft_model.parameters() if p.requires_grad)


def test_load_tokenizer_and_model(tiny_model_dir):
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    assert tokenizer("the movie").input_ids == [tokenizer.convert_tokens_to_ids(w) for w in ("the", "movie")]
    model = models.load_causal_lm(str(tiny_model_dir))
    assert model.dtype == torch.float32


def test_pickle_weights_refused_unless_allowed(tiny_model_dir, tmp_path):
    target = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, target)
    model = models.load_causal_lm(str(target))
    (target / "model.safetensors").unlink()
    torch.save(model.state_dict(), target / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        models.load_causal_lm(str(target))


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        models.load_causal_lm(str(tmp_path))


def test_resolve_dtype_cpu():
    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert models.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
