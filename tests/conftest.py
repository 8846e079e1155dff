"""Shared fixtures: a tiny word tokenizer and tiny random models, built offline in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from preflab.models.tiny import build_word_tokenizer, save_tiny_model

WORDS = (
    "the a movie film was is great good bad awful not very really but and plot acting "
    "story it i liked hated fine boring fun this that so quite"
).split()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Llama (hidden 32) with the word tokenizer, saved as an HF directory."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), WORDS, arch="llama")


# --- a miniature comparison (tests/test_compare.py, tests/test_notebook.py) ---------------------
TINY = {
    "sft": {"max_steps": 20, "batch_size": 16},
    "dpo": {"max_steps": 3, "batch_size": 4, "eval_every": 2, "eval_num_prompts": 4},
    "ipo": {"max_steps": 3, "batch_size": 4, "eval_every": 2, "eval_num_prompts": 4},
    "simpo": {"max_steps": 3, "batch_size": 4, "eval_every": 2, "eval_num_prompts": 4},
    "rm": {"max_steps": 3, "batch_size": 4},
    "kto": {"max_steps": 3, "batch_size": 4, "eval_every": 2, "eval_num_prompts": 4},
    "online-dpo": {"rounds": 2, "pairs_per_round": 8, "steps_per_round": 2, "batch_size": 4,
                   "eval_every": 2, "eval_num_prompts": 4},
    "rm-lora": {"max_steps": 3, "batch_size": 4},
    "ppo": {"max_steps": 2, "rollout_batch_size": 4, "num_minibatches": 2, "batch_size": 4,
            "eval_every": 1, "eval_num_prompts": 4},
    "ppo-shared": {"max_steps": 2, "rollout_batch_size": 4, "num_minibatches": 2,
                   "batch_size": 4, "eval_every": 1, "eval_num_prompts": 4},
    "rloo": {"max_steps": 2, "rollout_batch_size": 2, "num_generations": 2, "num_minibatches": 2,
             "batch_size": 4, "eval_every": 1, "eval_num_prompts": 4},
    "grpo": {"max_steps": 2, "rollout_batch_size": 2, "num_generations": 2, "num_minibatches": 2,
             "batch_size": 4, "eval_every": 1, "eval_num_prompts": 4},
}


def tiny_config(path: Path, **changes) -> Path:
    import yaml

    hyper = {k: dict(v) for k, v in TINY.items()}
    for section, values in changes.items():
        hyper[section].update(values)
    # max_new_tokens: every sampled length at once (RL rollouts, online DPO, evaluation)
    path.write_text(yaml.safe_dump({"pair_prompts": 24, "eval_prompts": 8, "eval_samples": 2,
                                    "max_new_tokens": 8,
                                    "jobs": 2, "progress": False, "hyperparameters": hyper}))
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from preflab.world.build import build_world

    return build_world(tmp_path_factory.mktemp("world") / "w", num_reviews=300,
                       num_prompts_train=60, num_prompts_eval=24, hidden_size=16, num_layers=1,
                       num_heads=2)


@pytest.fixture(scope="session")
def quick(tiny_world, tmp_path_factory):
    """`preflab compare --preset quick` on the tiny world, with KTO, online DPO, RLOO, GRPO and
    best-of-n added and IPO made to fail (beta must be positive): ``(output dir, exit code, config file)``. Shared by
    the compare and notebook tests, which reuse its finished runs."""
    from preflab.cli import main

    root = tmp_path_factory.mktemp("cmp")
    import yaml

    config = tiny_config(root / "tiny.yaml", ipo={"beta": -1.0})
    settings = yaml.safe_load(config.read_text())
    settings["methods"] = "dpo,ipo,ppo,ppo-shared,kto,online-dpo,rloo,grpo,bon"  # every run sees them
    config.write_text(yaml.safe_dump(settings))
    out = root / "cmp"
    code = main(["compare", "--world", str(tiny_world), "--output-dir", str(out), "--preset",
                 "quick", "--config", str(config)])
    return out, code, config


