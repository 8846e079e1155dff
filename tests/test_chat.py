"""Chat prompts everywhere: one rendering (``preflab.data.chat``), through ``preflab sample``
and ``preflab label`` to pairs the preference loaders read back with the same prompt ids,
and ``generate`` sampling from the data layer's ids (never a second BOS)."""

from __future__ import annotations

import json
import shutil

import pytest

from preflab.cli import main
from preflab.data import (
    TruncationPolicy,
    load_preference_dataset,
    load_prompt_dataset,
    load_unpaired_dataset,
)
from preflab.data.chat import PromptText, render_chat_prompt, tokenize_prompt
from preflab.errors import DataError
from preflab.generation import generate
from preflab.models import load_tokenizer
from preflab.models.tiny import build_random_causal_lm, build_word_tokenizer
from tests.conftest import WORDS

CHAT = [{"role": "user", "content": "the movie was"}]
REWARD = "def length(prompts, completions, **kwargs):\n    return [len(c.split()) for c in completions]\n"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_samples(tiny_model_dir, tmp_path_factory):
    """`preflab sample` on a mixed prompt file: a chat prompt, a `messages` record, a text."""
    folder = tmp_path_factory.mktemp("chat")
    prompts = write_jsonl(folder / "prompts.jsonl", [
        {"prompt": CHAT},
        {"messages": [{"role": "system", "content": "so"}, {"role": "user", "content": "i liked"},
                      {"role": "assistant", "content": "the plot"}]},
        {"prompt": "this film is"},
    ])
    out = folder / "samples.jsonl"
    assert main(["sample", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--n", "4",
                 "--max-new-tokens", "6", "--out", str(out), "--no-progress"]) == 0
    (folder / "rewards.py").write_text(REWARD)
    return out


def test_sample_keeps_chat_prompts_as_given_with_their_rendering(chat_samples, tiny_tokenizer):
    records = read_jsonl(chat_samples)
    assert [r["prompt"] for r in records] == [
        CHAT, [{"role": "system", "content": "so"}, {"role": "user", "content": "i liked"}],
        "this film is"]
    assert records[0]["prompt_text"] == render_chat_prompt(tiny_tokenizer, CHAT)
    assert records[0]["prompt_text"].endswith("<|assistant|> ")
    assert "prompt_text" not in records[2]  # a text prompt is its own text
    assert all(len(r["completions"]) == 4 for r in records)


@pytest.mark.parametrize("kto", [False, True])
def test_label_writes_conversational_records_that_load_with_the_sampled_prompt_ids(
        chat_samples, tiny_model_dir, tmp_path, kto):
    out = tmp_path / "pairs.jsonl"
    args = ["label", "--judge", f"{chat_samples.parent / 'rewards.py'}:length", "--in",
            str(chat_samples), "--out", str(out), "--pairing", "all", "--no-progress"]
    assert main(args + (["--kto"] if kto else [])) == 0
    records = read_jsonl(out)
    samples = {json.dumps(r["prompt"]): r for r in read_jsonl(chat_samples)}
    assert {json.dumps(r["prompt"]) for r in records} <= set(samples)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    sides = ["completion"] if kto else ["chosen", "rejected"]
    for r in records:
        for side in sides:
            if isinstance(r["prompt"], list):  # TRL's conversational format
                assert r[side][0]["role"] == "assistant" and len(r[side]) == 1
                assert r[side][0]["content"] in samples[json.dumps(r["prompt"])]["completions"]
            else:
                assert isinstance(r[side], str)
    assert any(isinstance(r["prompt"], list) for r in records)
    assert any(isinstance(r["prompt"], str) for r in records)  # mixed: each keeps its kind
    load = load_unpaired_dataset if kto else load_preference_dataset
    examples, _ = load(str(out), tokenizer, TruncationPolicy())
    assert len(examples) == len(records)
    sampled = {json.dumps(r["prompt"]): tokenize_prompt(tokenizer, r["prompt"])[0]
               for r in read_jsonl(chat_samples)}  # what `preflab sample` fed the model
    assert [e.prompt_ids for e in examples] == [sampled[json.dumps(r["prompt"])] for r in records]


def test_label_hands_the_judge_the_rendered_prompt(chat_samples, tmp_path):
    seen = tmp_path / "seen.py"
    seen.write_text("import json\nSEEN = []\n\ndef spy(prompts, completions, **kwargs):\n"
                    f"    open({str(tmp_path / 'seen.txt')!r}, 'a').write("
                    "''.join(json.dumps(p) + '\\n' for p in prompts))\n"
                    "    return [len(c) for c in completions]\n")
    assert main(["label", "--judge", f"{seen}:spy", "--in", str(chat_samples), "--out",
                 str(tmp_path / "p.jsonl"), "--no-progress"]) == 0
    prompts = {json.loads(line) for line in (tmp_path / "seen.txt").read_text().splitlines()}
    rendered = {r.get("prompt_text", r["prompt"]) for r in read_jsonl(chat_samples)}
    assert prompts == rendered and all(isinstance(p, str) for p in prompts)


def test_sample_without_a_chat_template_is_one_paragraph(tiny_model_dir, tmp_path, capsys):
    plain = tmp_path / "plain-model"
    plain.mkdir()
    for f in tiny_model_dir.iterdir():  # the weights, without the tokenizer and its template
        if "token" not in f.name and "chat" not in f.name:
            shutil.copy(f, plain / f.name)
    build_word_tokenizer(WORDS, chat_template=False).save_pretrained(plain)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "the movie"}, {"prompt": CHAT}])
    out = tmp_path / "s.jsonl"
    code = main(["sample", "--model", str(plain), "--prompts", str(prompts), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{prompts}, line 2, field 'prompt': the model's tokenizer has no chat template" in err
    assert not out.exists()


@pytest.mark.parametrize("record, message", [
    ({"prompt": [{"role": "assistant", "content": "the"}]}, "field 'prompt[0].role'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "field 'messages[2].role'"),
    ({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "field 'prompt': the conversation in 'prompt' ends with an 'assistant' message"),
])
def test_sample_refuses_a_bad_chat_prompt(record, message, tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "the"}, record])
    assert main(["sample", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--out",
                 str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{prompts}, line 2, {message}" in err and "Traceback" not in err


def test_label_refuses_a_chat_prompt_without_its_text_and_human_export(chat_samples, tmp_path,
                                                                      capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": CHAT, "completions": ["a", "b"]}])
    rewards = chat_samples.parent / "rewards.py"
    assert main(["label", "--judge", f"{rewards}:length", "--in", str(bad), "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    assert f"{bad}, line 1, field 'prompt_text'" in capsys.readouterr().err
    assert main(["label", "--in", str(chat_samples), "--export-human",
                 str(tmp_path / "people.csv"), "--pairing", "all"]) == 2
    err = capsys.readouterr().err
    assert "--export-human" in err and "chat prompts" in err and "Traceback" not in err


def test_render_chat_prompt_errors_name_the_place():
    plain = build_word_tokenizer(WORDS, chat_template=False)
    with pytest.raises(DataError, match="no chat template") as info:
        render_chat_prompt(plain, CHAT, path="p.jsonl", line=3, field="prompt")
    assert (info.value.path, info.value.line, info.value.field) == ("p.jsonl", 3, "prompt")
    broken = build_word_tokenizer(WORDS)
    broken.chat_template = "{{ raise_exception('no system messages') }}"
    with pytest.raises(DataError, match="chat template failed.*no system messages"):
        render_chat_prompt(broken, CHAT, path="p.jsonl", line=1, field="messages")


def _bos_tokenizer():
    """A Llama-2-like tokenizer: it adds BOS to every encoding, and its template writes one."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = build_word_tokenizer(WORDS)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B",
        special_tokens=[("<bos>", tokenizer.bos_token_id)])
    tokenizer.chat_template = "<bos> " + tokenizer.chat_template
    return tokenizer


def test_generate_samples_a_chat_prompt_from_the_data_layer_ids(tmp_path):
    tokenizer = _bos_tokenizer()
    bos = tokenizer.bos_token_id
    assert tokenizer("the")["input_ids"][0] == bos  # the tokenizer adds BOS ...
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": CHAT}, {"prompt": "the movie"}])
    examples, _ = load_prompt_dataset(str(data), tokenizer, TruncationPolicy())
    chat, text = examples
    assert chat.prompt_ids.count(bos) == 1 and chat.prompt_ids[0] == bos  # ... the template too
    assert text.prompt_ids[0] == bos
    assert tokenizer(chat.prompt)["input_ids"][:2] == [bos, bos]  # what encoding again gave
    model = build_random_causal_lm("llama", len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   bos_token_id=bos, eos_token_id=tokenizer.eos_token_id)
    groups = generate(model, tokenizer, [e.prompt for e in examples], num_samples=2,
                      max_new_tokens=3, seed=0)
    assert [g[0].prompt_ids for g in groups] == [chat.prompt_ids, text.prompt_ids]
    assert groups[0][0].prompt == chat.prompt  # rewards read the rendered text


def test_generate_keeps_a_truncated_prompt_truncated_and_retokenizes_for_another_tokenizer(
        tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "the movie was very good"}])
    (example,), _ = load_prompt_dataset(str(data), tiny_tokenizer,
                                        TruncationPolicy(max_length=8, max_prompt_length=2))
    assert isinstance(example.prompt, PromptText) and len(example.prompt_ids) == 2
    model = build_random_causal_lm("llama", len(tiny_tokenizer),
                                   pad_token_id=tiny_tokenizer.pad_token_id,
                                   bos_token_id=tiny_tokenizer.bos_token_id,
                                   eos_token_id=tiny_tokenizer.eos_token_id)
    (group,) = generate(model, tiny_tokenizer, [example.prompt], max_new_tokens=2)
    assert group[0].prompt_ids == example.prompt_ids
    other = _bos_tokenizer()  # ids made by another tokenizer are not reused: its own rule
    (group,) = generate(model, other, [example.prompt], max_new_tokens=2)
    assert group[0].prompt_ids == other("the movie was very good")["input_ids"]
