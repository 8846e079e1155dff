"""``preflab export``: a model directory written as GGUF and read back by transformers' GGUF
loader computes the same logits, and its tokenizer the same ids and chat template."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf")

from preflab.cli import main  # noqa: E402
from preflab.commands import export as export_module  # noqa: E402
from preflab.models import load_causal_lm, load_tokenizer  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = [
    "the movie was great, and the plot was not boring!",
    "Hello world 123 <think> ok</think>",
    "<|im_start|>user\nis it good?<|im_end|>\n<|endoftext|>",
    "  two  spaces\tand a tab\n\nnew lines; ünïcödé ✓",
]
CHAT = [{"role": "user", "content": "was the film good?"},
        {"role": "assistant", "content": "quite fun, really"},
        {"role": "user", "content": "and the acting?"}]


def byte_level_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style) trained here on a few sentences: ~300 tokens,
    special tokens, one user-defined added token (<think>) and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["the movie was great and the plot was fun", "a film is not bad but boring",
              "the acting was really good, the story quite awful", "i liked it; so did you?",
              "Hello world, hello there 12345 67890"] * 20
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                        eos_token="<|im_end|>", pad_token="<pad>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.add_tokens(["<think>", "</think>"])  # user-defined: matched whole, not special
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(arch: str, vocab_size: int, *, tied: bool = False, seed: int = 0):
    """hidden 64 (a multiple of 32, for q8_0), 2 layers, 4 heads, 2 KV heads (grouped-query).
    The weights are drawn five times wider than usual (std 0.1): attention then depends on the
    q/k weights enough that a wrong rotary permutation shows in the logits."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    config = cls(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=128, tie_word_embeddings=tied, initializer_range=0.1,
                 bos_token_id=0, eos_token_id=2, pad_token_id=3, rms_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    if arch == "qwen2":  # biases start at zero: make them count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def save(tmp_path, arch, tokenizer, **kw):
    model = tiny_model(arch, len(tokenizer), **kw)
    out = tmp_path / f"{arch}-hf"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model, out


def run_export(model_dir, out, kind="f32", *extra):
    code = main(["export", str(model_dir), "--gguf", str(out), "--type", kind, "--no-progress",
                 *extra])
    assert code == 0
    return out


def batch(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (3, 24), generator=torch.Generator().manual_seed(1))


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("arch, tied", [("llama", True), ("llama", False), ("qwen2", True),
                                        ("qwen2", False), ("mistral", False)])
def test_f32_export_reads_back_with_the_same_logits(tmp_path, tokenizer, arch, tied, capsys):
    model, model_dir = save(tmp_path, arch, tokenizer, tied=tied)
    out = run_export(model_dir, tmp_path / "m.gguf", "f32")
    summary = capsys.readouterr().out
    assert "--type f32" in summary and str(out) in summary
    back = load_causal_lm(str(out))
    assert back.config.tie_word_embeddings == tied
    ids = batch(len(tokenizer))
    diff = (logits_of(back, ids) - logits_of(model, ids)).abs().max().item()
    assert diff <= 1e-5, diff


def test_qwen2_biases_and_tied_head_are_in_the_file(tmp_path, tokenizer):
    import gguf

    _, model_dir = save(tmp_path, "qwen2", tokenizer, tied=True)
    out = run_export(model_dir, tmp_path / "q.gguf", "q8_0")
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(tensors)
    types = gguf.GGMLQuantizationType
    assert tensors["blk.0.attn_q.bias"].tensor_type == types.F32  # 1-D: f32 in every type
    assert tensors["blk.1.ffn_norm.weight"].tensor_type == types.F32
    assert tensors["blk.0.ffn_down.weight"].tensor_type == types.Q8_0
    # The embedding's rows are 64 long, a multiple of 32: q8_0 as well.
    assert tensors["token_embd.weight"].tensor_type == types.Q8_0
    field = reader.fields["qwen2.attention.head_count_kv"]
    assert int(field.parts[field.data[0]][0]) == 2


# f16 rounds each weight to 11 significant bits: a relative error of at most 2^-11 (~5e-4)
# per weight. q8_0 stores each block of 32 weights as q * d, q = round(w / d) in [-127, 127],
# d = absmax / 127 in f16: an error up to d/2 (+ f16's rounding of d) per weight, ~0.4% of the
# block's largest weight. Through two layers and the head these give, measured on these
# models (logits of std ~0.8; max abs difference over 3 x 24 positions x 302 tokens; llama,
# qwen2 and mistral, tied and untied): f16 2.1e-3 to 3.3e-3, q8_0 4.8e-2 to 8.5e-2. The
# bounds leave a margin of 3.5x or more (f16 0.015, q8_0 0.3). A wrong rotary permutation
# moves the same logits by 2.3 and swapped gate/up weights by 1.7 (measured the same way), past
# 3x the q8_0 bound: both are checked below. The weights themselves are checked per block.
BOUNDS = {"f16": 0.015, "q8_0": 0.3}


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f16_and_q8_0_stay_within_their_rounding(tmp_path, tokenizer, arch, kind):
    model, model_dir = save(tmp_path, arch, tokenizer)
    out = run_export(model_dir, tmp_path / "m.gguf", kind)
    back = load_causal_lm(str(out))
    ids = batch(len(tokenizer))
    original, read_back = logits_of(model, ids), logits_of(back, ids)
    diff = (read_back - original).abs().max().item()
    assert 0 < diff <= BOUNDS[kind], diff  # rounded (not written as f32), within the bound
    weights = dict(back.named_parameters())
    for name, w in model.named_parameters():
        got = weights[name].detach()
        if w.dim() == 1:
            assert torch.equal(got, w.detach()), name  # norms and biases stay f32
        elif kind == "f16":
            assert torch.equal(got, w.detach().half().float()), name
        else:  # every weight within 0.6 of its block's step d = absmax / 127
            blocks = w.detach().reshape(w.shape[0], -1, 32)
            step = blocks.abs().amax(-1, keepdim=True) / 127
            assert ((got.reshape(blocks.shape) - blocks).abs() <= 0.6 * step + 1e-12).all(), name


def test_a_wrong_rotary_permutation_would_fail_the_bounds(tmp_path, tokenizer, monkeypatch):
    model, model_dir = save(tmp_path, "llama", tokenizer)
    monkeypatch.setattr(export_module, "permute_rotary", lambda w, n_head: w)
    out = run_export(model_dir, tmp_path / "wrong.gguf", "f32")
    ids = batch(len(tokenizer))
    diff = (logits_of(load_causal_lm(str(out)), ids) - logits_of(model, ids)).abs().max().item()
    assert diff > 3 * BOUNDS["q8_0"], diff


def test_swapped_tensors_would_fail_the_bounds(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    model, model_dir = save(tmp_path, "llama", tokenizer)
    weights = load_file(model_dir / "model.safetensors")
    up, gate = "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.gate_proj.weight"
    weights[up], weights[gate] = weights[gate], weights[up]
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    out = run_export(model_dir, tmp_path / "swapped.gguf", "f32")
    ids = batch(len(tokenizer))
    diff = (logits_of(load_causal_lm(str(out)), ids) - logits_of(model, ids)).abs().max().item()
    assert diff > 3 * BOUNDS["q8_0"], diff


def test_tokenizer_and_chat_template_read_back_the_same(tmp_path, tokenizer):
    _, model_dir = save(tmp_path, "llama", tokenizer, tied=True)
    out = run_export(model_dir, tmp_path / "m.gguf", "f16")
    original, back = load_tokenizer(str(model_dir)), load_tokenizer(str(out))
    rendered = original.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    for text in [*TEXTS, rendered]:
        assert back(text)["input_ids"] == original(text)["input_ids"], text
        ids = original(text, add_special_tokens=False)["input_ids"]
        assert back.decode(ids) == original.decode(ids)
    assert back.chat_template == original.chat_template == CHAT_TEMPLATE
    assert (back.apply_chat_template(CHAT, add_generation_prompt=True)
            == original.apply_chat_template(CHAT, add_generation_prompt=True))
    for name in ("bos_token", "eos_token", "pad_token"):
        assert getattr(back, name) == getattr(original, name), name


def test_a_tokenizer_that_adds_bos_says_so_and_reads_back_the_same(tmp_path):
    from tokenizers import processors

    tokenizer = byte_level_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    _, model_dir = save(tmp_path, "llama", tokenizer)
    out = run_export(model_dir, tmp_path / "m.gguf", "f32")
    original, back = load_tokenizer(str(model_dir)), load_tokenizer(str(out))
    for text in TEXTS:
        ids = original(text)["input_ids"]
        assert ids[0] == bos and back(text)["input_ids"] == ids


def test_token_types_and_special_ids_in_the_file(tmp_path, tokenizer):
    import gguf

    _, model_dir = save(tmp_path, "llama", tokenizer)
    reader = gguf.GGUFReader(run_export(model_dir, tmp_path / "m.gguf", "f32"))

    def value(key):
        field = reader.fields[key]
        return field.contents()

    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == len(tokenizer) == value("llama.vocab_size")
    kinds = dict(zip(tokens, types))
    assert kinds["<|im_start|>"] == kinds["<|endoftext|>"] == gguf.TokenType.CONTROL
    assert kinds["<think>"] == gguf.TokenType.USER_DEFINED
    assert kinds["the"] == gguf.TokenType.NORMAL
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert value("tokenizer.ggml.add_bos_token") is False
    assert len(value("tokenizer.ggml.merges")) > 0
    assert value("llama.rope.dimension_count") == 16
    assert value("llama.attention.head_count_kv") == 2
    assert value("general.file_type") == gguf.LlamaFileType.ALL_F32


# --- refusals: one paragraph on stderr, exit 2, no traceback -------------------------------------

def refused(capsys, *argv) -> str:
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("preflab export: error:")
    return err


def test_an_unsupported_architecture_is_refused_by_name(tmp_path, tokenizer, capsys):
    from preflab.models.tiny import build_random_causal_lm

    model = build_random_causal_lm("gpt2", len(tokenizer))
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    err = refused(capsys, str(tmp_path / "gpt2"), "--gguf", str(tmp_path / "g.gguf"))
    assert "'gpt2'" in err and "llama, mistral, qwen2" in err
    assert not (tmp_path / "g.gguf").exists()


def test_a_word_level_tokenizer_is_refused_by_name(tmp_path, capsys):
    from preflab.models.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "words", ["the", "movie"], arch="llama")
    err = refused(capsys, str(model_dir), "--gguf", str(tmp_path / "w.gguf"))
    assert "WordLevel tokenizer" in err and "byte-level BPE" in err
    assert list(tmp_path.glob("*.gguf*")) == []  # not even a temp file


def test_missing_dir_bad_suffix_and_existing_out_are_refused(tmp_path, tokenizer, capsys):
    err = refused(capsys, str(tmp_path / "nope"), "--gguf", str(tmp_path / "m.gguf"))
    assert "no such model directory" in err
    (tmp_path / "empty").mkdir()
    assert "no config.json" in refused(capsys, str(tmp_path / "empty"), "--gguf",
                                       str(tmp_path / "m.gguf"))
    _, model_dir = save(tmp_path, "llama", tokenizer)
    assert ".gguf" in refused(capsys, str(model_dir), "--gguf", str(tmp_path / "m.bin"))
    existing = tmp_path / "m.gguf"
    existing.write_bytes(b"keep me")
    assert "--gguf exists" in refused(capsys, str(model_dir), "--gguf", str(existing))
    assert existing.read_bytes() == b"keep me"
    run_export(model_dir, existing, "f16", "--overwrite")
    assert existing.read_bytes()[:4] == b"GGUF"


def test_help_documents_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--gguf", "--type", "--overwrite", "--model"):
        assert flag in out
