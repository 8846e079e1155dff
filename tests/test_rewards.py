"""Reward sources: spec parsing, weighted sums with each part kept, reward models that
re-tokenize the policy's text with their own tokenizer."""

from __future__ import annotations

import pytest
import torch

from preflab.data import pad_sequences
from preflab.errors import ConfigError
from preflab.models.heads import sequence_scores
from preflab.models.tiny import save_tiny_model
from preflab.rewards import (
    CombinedReward,
    RewardComponent,
    RewardModel,
    check_reward_specs,
    component_name,
    load_reward,
    parse_reward_specs,
)
from tests.conftest import WORDS

REWARD_FILE = '''
def positive(prompts, completions, **kwargs):
    return [float(c.split().count("great")) for c in completions]

def length(prompts, completions):  # no **kwargs: gets only what it names
    return [float(len(c.split())) for c in completions]

def finished(prompts, completions, ended_with_eos):
    return [1.0 if e else 0.0 for e in ended_with_eos]
'''


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FILE)
    return path


def test_parse_reward_specs_weights_after_the_last_colon():
    assert parse_reward_specs("runs/rm") == [("runs/rm", 1.0)]
    assert parse_reward_specs("runs/rm:0.7") == [("runs/rm", 0.7)]
    assert parse_reward_specs("mod:fn") == [("mod:fn", 1.0)]
    assert parse_reward_specs("rm1:0.7, pkg.mod:harmless:0.3") == [
        ("rm1", 0.7), ("pkg.mod:harmless", 0.3)]
    assert parse_reward_specs("f.py:fn:-2") == [("f.py:fn", -2.0)]
    with pytest.raises(ConfigError):
        parse_reward_specs(" , ")


def test_check_reward_specs_fails_before_any_model_loads(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no model"):
        check_reward_specs(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="neither a model directory nor a function"):
        check_reward_specs("no_such_model_dir")
    check_reward_specs("some.module:fn:0.5")  # a function spec is checked when it loads


def test_combined_reward_is_the_weighted_sum_and_keeps_each_part(reward_file):
    reward = load_reward(f"{reward_file}:positive:2.0,{reward_file}:length:-0.5,"
                         f"{reward_file}:finished")
    assert reward.names == ["positive", "length", "finished"]
    total, parts = reward(["a", "b"], [" great great", " fine"], ended_with_eos=[True, False])
    assert parts == {"positive": [2.0, 0.0], "length": [2.0, 1.0], "finished": [1.0, 0.0]}
    assert total == [2.0 * 2 - 0.5 * 2 + 1.0, 0.0 - 0.5 * 1 + 0.0]


def test_component_names_are_unique():
    fn = lambda p, c, **k: [1.0] * len(c)  # noqa: E731
    reward = CombinedReward([RewardComponent("a", "x:a", 1.0, fn, "function")])
    assert reward.names == ["a"]
    assert component_name("pkg.mod:harmless") == "harmless"


@pytest.fixture(scope="module")
def other_tokenizer_rm(tmp_path_factory):
    """A reward model whose tokenizer numbers the words differently from the policy's."""
    return save_tiny_model(tmp_path_factory.mktemp("rm-other"), list(reversed(WORDS)), seed=3)


def test_reward_model_retokenizes_with_its_own_tokenizer(other_tokenizer_rm, tiny_tokenizer):
    rm = RewardModel.from_pretrained(str(other_tokenizer_rm))
    assert rm.tokenizer.get_vocab() != tiny_tokenizer.get_vocab()
    prompts, completions = ["the movie was", "a film is"], [" great fun", " not very good"]
    got = rm(prompts, completions, ended_with_eos=[True, False])

    tok = rm.tokenizer
    rows = [tok(p + c)["input_ids"] for p, c in zip(prompts, completions)]
    rows[0] = rows[0] + [tok.eos_token_id]  # ended: EOS appended, as in training
    model = rm.model  # (its head is new: a causal LM loaded as a classifier)
    ids = pad_sequences(rows, tok.pad_token_id)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    want = sequence_scores(model, ids, mask).tolist()
    assert got == pytest.approx(want, abs=1e-5)
    # the EOS changes the score: it is where the score is read
    assert rm(prompts[:1], completions[:1], ended_with_eos=[False])[0] != pytest.approx(got[0])


def test_reward_model_and_function_combined(other_tokenizer_rm, reward_file, tmp_path):
    run_dir = tmp_path / "rm_run"
    run_dir.mkdir()
    (run_dir / "final").symlink_to(other_tokenizer_rm, target_is_directory=True)
    reward = load_reward(f"{run_dir}:0.5,{reward_file}:positive:1.0")  # a run dir: its final/
    assert reward.names == ["rm_run", "positive"]
    assert len(reward.models()) == 1
    total, parts = reward(["the movie was"], [" great"])
    assert total[0] == pytest.approx(0.5 * parts["rm_run"][0] + 1.0)
