"""Small models and tokenizers built from nothing: for tests, benchmarks and the built-in world.

Nothing here downloads. ``build_word_tokenizer`` makes a word-level
``PreTrainedTokenizerFast`` (whitespace split, special tokens, a chat template), and
``build_random_causal_lm`` a randomly initialised decoder of a chosen architecture family.
``save_tiny_model`` writes both as an ordinary Hugging Face model directory, so every part
of preflab loads them exactly as it loads a user's model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# A minimal chat format: each message is "<|role|> content <|end|>", and the generation
# prompt is "<|assistant|>". The completion of an assistant turn ends with "<|end|>" then EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' <|end|> ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)

ARCHITECTURES = ("llama", "qwen2", "gpt2", "gpt_neox")


def build_word_tokenizer(words: Iterable[str], *, chat_template: bool = True):
    """A word-level tokenizer over ``words`` (plus specials and role tokens); unknown -> <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *ROLE_TOKENS, *words]:
        if token not in vocab:
            vocab[token] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_random_causal_lm(
    arch: str,
    vocab_size: int,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 256,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = False,
):
    """A randomly initialised causal LM of family ``arch`` (one of ``ARCHITECTURES``)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _config_for(
        arch,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_positions=max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def _config_for(arch: str, **kw):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=kw["vocab_size"],
        pad_token_id=kw["pad_token_id"],
        bos_token_id=kw["bos_token_id"],
        eos_token_id=kw["eos_token_id"],
        tie_word_embeddings=kw["tie_word_embeddings"],
    )
    if arch in ("llama", "qwen2"):
        cls = LlamaConfig if arch == "llama" else Qwen2Config
        return cls(
            hidden_size=kw["hidden_size"],
            intermediate_size=kw["intermediate_size"],
            num_hidden_layers=kw["num_layers"],
            num_attention_heads=kw["num_heads"],
            num_key_value_heads=kw["num_heads"],
            max_position_embeddings=kw["max_positions"],
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(
            n_embd=kw["hidden_size"],
            n_inner=kw["intermediate_size"],
            n_layer=kw["num_layers"],
            n_head=kw["num_heads"],
            n_positions=kw["max_positions"],
            **common,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=kw["hidden_size"],
            intermediate_size=kw["intermediate_size"],
            num_hidden_layers=kw["num_layers"],
            num_attention_heads=kw["num_heads"],
            max_position_embeddings=kw["max_positions"],
            **common,
        )
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def save_tiny_model(
    out_dir: str | Path,
    words: Iterable[str],
    *,
    arch: str = "llama",
    seed: int = 0,
    **model_kwargs,
) -> Path:
    """Write a word tokenizer and a random ``arch`` model to ``out_dir``; return the path."""
    out = Path(out_dir)
    tokenizer = build_word_tokenizer(words)
    model = build_random_causal_lm(
        arch,
        len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        seed=seed,
        **model_kwargs,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
