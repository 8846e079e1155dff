"""The flags of a GPU user's first run reach every model of every training command:
``--gradient-checkpointing`` every model that trains, ``--attn-implementation`` every model
loaded through ``preflab.models``."""

from __future__ import annotations

import pytest
import torch

from preflab import models
from preflab.cli import main
from preflab.errors import ConfigError
from tests.sft_data import sft_records, write_jsonl
from tests.test_dpo import pair_records
from tests.test_kto import unpaired_records

REWARD = '''
def positive(prompts, completions, **kwargs):
    return [sum(w in ("great", "good", "fun") for w in c.split()) - 0.01 * len(c.split())
            for c in completions]
'''
SHARED = ["--max-steps", "1", "--batch-size", "4", "--no-progress", "--max-length", "32",
          "--gradient-checkpointing", "--attn-implementation", "eager"]
RL = ["--rollout-batch-size", "4", "--num-minibatches", "1", "--response-length", "4",
      "--eval-fraction", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    (root / "r.py").write_text(REWARD)
    prompts = [{"prompt": f"{d} {n} was"} for d in ("the", "a") for n in ("movie", "film")]
    return {"sft": write_jsonl(root / "sft.jsonl", sft_records(16)),
            "pairs": write_jsonl(root / "pairs.jsonl", pair_records(16)),
            "kto": write_jsonl(root / "kto.jsonl", unpaired_records(16)),
            "prompts": write_jsonl(root / "prompts.jsonl", prompts),
            "reward": f"{root / 'r.py'}:positive"}


def commands(d: dict) -> dict[str, list[str]]:
    return {
        "sft": ["--data", str(d["sft"]), "--eval-fraction", "0"],
        "rm": ["--data", str(d["pairs"]), "--eval-fraction", "0"],
        "dpo": ["--data", str(d["pairs"]), "--eval-fraction", "0"],
        "kto": ["--data", str(d["kto"]), "--eval-fraction", "0"],
        "online-dpo": ["--data", str(d["prompts"]), "--judge", d["reward"], "--rounds", "1",
                       "--pairs-per-round", "4", "--num-samples", "2", "--max-new-tokens", "4"],
        "ppo": ["--data", str(d["prompts"]), "--reward", d["reward"], *RL],
        "rloo": ["--data", str(d["prompts"]), "--reward", d["reward"], "--num-generations", "2",
                 *RL],
        "grpo": ["--data", str(d["prompts"]), "--reward", d["reward"], "--num-generations", "2",
                 *RL],
    }


@pytest.mark.parametrize("mode", ["fp32", "bf16-mixed"])
@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "kto", "online-dpo", "ppo", "rloo",
                                     "grpo"])
def test_every_model_of_every_training_command_takes_both_flags(tiny_model_dir, data, tmp_path,
                                                                monkeypatch, command, mode):
    """Under fp32 and under bf16-mixed: every trained model (float32 in both) checkpoints its
    activations, and every model attends with the kernel asked for."""
    loaded = []
    for name in ("load_causal_lm", "load_sequence_classifier"):
        real = getattr(models, name)

        def record(*args, _real=real, **kwargs):
            model = _real(*args, **kwargs)
            loaded.append(model)
            return model

        monkeypatch.setattr(models, name, record)
    argv = [command, "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "run"),
            *SHARED, "--precision", mode, *commands(data)[command]]
    if command == "online-dpo":  # rounds, not steps
        del argv[argv.index("--max-steps"):argv.index("--max-steps") + 2]
    assert main(argv) == 0
    trained = [m for m in loaded if any(p.requires_grad for p in m.parameters())]
    assert trained, "no model trained"
    assert len(trained) == (2 if command == "ppo" else 1)  # ppo: the policy and the value model
    assert all(m.is_gradient_checkpointing for m in trained)
    assert all(p.dtype == torch.float32 for m in trained for p in m.parameters())
    assert all(m.config._attn_implementation == "eager" for m in loaded)


def test_flash_attention_without_its_package_is_refused_before_loading(tiny_model_dir, data,
                                                                       tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real(name, *a))
    from preflab.algorithms.sft import SFTConfig
    from preflab.config import parse_config

    with pytest.raises(ConfigError, match="needs the flash-attn package"):
        parse_config(SFTConfig, ["--model", str(tiny_model_dir), "--data", str(data["sft"]),
                                 "--output-dir", str(tmp_path / "run"),
                                 "--attn-implementation", "flash_attention_2"], prog="sft")
