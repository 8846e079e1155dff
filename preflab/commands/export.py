"""``preflab export``: write a model directory as one GGUF file, for llama.cpp, Ollama and LM Studio.

    preflab export runs/dpo/final --gguf model.gguf --type q8_0

The model is an ordinary Hugging Face directory (config.json, safetensors, tokenizer), such
as a run's ``final/`` (a LoRA run's is already merged). The file holds the weights under
llama.cpp's tensor names, the hyperparameters, the tokenizer and the chat template.

Architectures: llama, mistral (written as llama, which llama.cpp runs it as) and qwen2.
Tokenizers: byte-level BPE (GPT-2, SmolLM2, Qwen2, Llama-3 style). Anything else is refused
by name, before any file is written.

``--type``: f32 (exact), f16 (2-D weights rounded to half precision) or q8_0 (2-D weights
whose rows are a multiple of 32 long in blocks of 32 int8 values with one f16 scale; the rest
in f16). Norms and biases stay f32 in every type. docs/export.md gives the errors measured.

The file is written next to ``--gguf`` under a temporary name and renamed when complete; an
existing file is refused without ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from preflab.config import arg, check_new_file, parse_config
from preflab.errors import ConfigError, ModelLoadError
from preflab.runtime.progress import progress_bar

TYPES = ("f32", "f16", "q8_0")
# config.model_type -> llama.cpp architecture. Mistral is llama.cpp's llama (as in llama.cpp's
# own converter); transformers reads the file back as a llama, which computes the same.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# Llama-family q_proj/k_proj rows are stored per head as [first halves | second halves] for
# transformers' rotary embedding; llama.cpp wants the two halves interleaved.
PERMUTED = ("llama",)
# Buffers some checkpoints carry that are recomputed from the config.
SKIPPED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

# Pre-tokenizers (the regex that splits text before BPE) that llama.cpp knows by name.
GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
               "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
                "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
SPLIT_PRE = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}


@dataclass
class ExportConfig:
    """``preflab export``: the model directory, the GGUF file, the weight type."""

    model: str = arg("", "Model directory (config.json, safetensors, tokenizer), e.g. a run's "
                     "final/; may also be given as the first argument.")
    gguf: str = arg("", "GGUF file to write (.gguf).")
    type: str = arg("f16", "Weight type of the 2-D tensors: f32 (exact), f16, or q8_0 (8-bit "
                    "blocks of 32; rows not a multiple of 32 long stay f16). Norms and biases "
                    "are always f32.", choices=TYPES)
    overwrite: bool = arg(False, "Replace an existing --gguf file.")
    progress: bool = arg(True, "Show progress (a bar on a terminal; in a log, a line at every "
                         "tenth of the work).")

    def validate(self) -> None:
        for name in ("model", "gguf"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required", field=name)
        check_new_file(self.gguf, "gguf", self.overwrite, suffixes=(".gguf",))


def _import_gguf():
    from preflab.models import import_gguf

    return import_gguf()


# --- the model: config and tensors ---------------------------------------------------------------

def check_model_dir(path: str) -> Path:
    """A local model directory with a config.json and safetensors weights."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ModelLoadError("no such model directory", path=path,
                             expected="a Hugging Face model directory such as a run's final/")
    if not root.is_dir() or not (root / "config.json").is_file():
        raise ModelLoadError("not a model directory: it has no config.json", path=path,
                             expected="a Hugging Face model directory such as a run's final/")
    return root


def weight_files(root: Path) -> dict[str, Path]:
    """Every tensor name -> the safetensors file that holds it (one file or an index)."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: root / file for name, file in weight_map.items()}
    single = root / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    pickled = sorted(p.name for p in root.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    raise ModelLoadError(
        "no safetensors weights (model.safetensors or model.safetensors.index.json)"
        + (f"; {', '.join(pickled)} are pickle files, which export does not read" if pickled
           else ""), path=str(root),
        expected="a directory written by save_pretrained (preflab's final/ is)")


def read_config(root: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:  # KeyError: a model_type it does not know
        raise ModelLoadError(f"could not read config.json: {str(exc).splitlines()[0]}",
                             path=str(root)) from None


def check_architecture(config, path: str) -> str:
    """The llama.cpp architecture of ``config``, or a ConfigError naming what can be written."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"cannot export a {model_type!r} model to GGUF", path=path,
                          expected=f"one of {', '.join(ARCHITECTURES)} (config.json model_type)")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"rope scaling {rope['rope_type']!r} is not written to GGUF by "
                          "preflab export", path=path, expected="a model with plain RoPE")
    return ARCHITECTURES[model_type]


def _rope_parameters(config) -> dict:
    # transformers 5 keeps rope_theta and the scaling in config.rope_parameters; 4.x had both
    # as attributes.
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in rope and getattr(config, "rope_theta", None) is not None:
        rope["rope_theta"] = config.rope_theta
    scaling = getattr(config, "rope_scaling", None)
    if scaling and "rope_type" not in rope:
        rope["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    return rope


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permute_rotary(weight, n_head: int):
    """transformers' rotary layout -> llama.cpp's, for a q_proj/k_proj weight or bias: in each
    head the rows (r, r + d/2) become neighbours (2r, 2r + 1). transformers' GGUF reader
    undoes exactly this (``_reverse_permute_weights``)."""
    shape = weight.shape
    return weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def plan_tensors(config, names: list[str], arch: str, path: str) -> list[tuple[str, str]]:
    """``(hf name, gguf name)`` for every tensor to write, in the file's order."""
    gguf = _import_gguf()
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    table = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan, unknown = [], []
    for name in names:
        if SKIPPED.search(name) or (tied and name == "lm_head.weight"):
            continue  # a tied head is the embedding: llama.cpp uses token_embd without output
        target = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            unknown.append(name)
        else:
            plan.append((name, target))
    if unknown:
        raise ModelLoadError(f"tensors with no GGUF name for {arch}: {', '.join(unknown[:5])}"
                             + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""),
                             path=path, expected=f"a plain {config.model_type} checkpoint")
    written = {target for _, target in plan}
    missing = [t for t in ("token_embd.weight", "output_norm.weight") if t not in written]
    if not tied and "output.weight" not in written:
        missing.append("output.weight (lm_head.weight; the config says it is not tied)")
    if missing:
        raise ModelLoadError(f"the weights lack {', '.join(missing)}", path=path)
    return plan


def tensor_kind(target: str, shape: tuple[int, ...], wanted: str):
    """The GGML type a tensor is written as: 1-D (norms, biases) f32 always; 2-D as asked,
    but q8_0 only where a row is a whole number of 32-value blocks (else f16)."""
    gguf = _import_gguf()
    types = gguf.GGMLQuantizationType
    if len(shape) < 2 or wanted == "f32":
        return types.F32
    if wanted == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0] == 0:
        return types.Q8_0
    return types.F16


def encode_tensor(array, kind):
    """A float32 array as the bytes of GGML type ``kind`` (an ndarray the writer takes)."""
    import numpy as np

    gguf = _import_gguf()
    types = gguf.GGMLQuantizationType
    if kind == types.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if kind == types.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), kind)


# --- the tokenizer ---------------------------------------------------------------------------------

def _pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name for a byte-level pre-tokenizer (``tokenizer.ggml.pre``), or None."""
    if not pre:
        return None
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    last = steps[-1]
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space"):
        return None
    head = steps[:-1]
    if last.get("use_regex", True):  # ByteLevel splits with GPT-2's regex itself
        if not head:
            return "gpt-2"  # llama.cpp spells GPT-2's pre-tokenizer with a hyphen
        if (len(head) == 1 and head[0].get("type") == "Digits"
                and head[0].get("individual_digits")):
            return "smollm"  # each digit alone, then GPT-2's regex (llama.cpp's smollm)
        return None
    if (len(head) == 1 and head[0].get("type") == "Split"
            and head[0].get("behavior") == "Isolated" and not head[0].get("invert")):
        return SPLIT_PRE.get(head[0].get("pattern", {}).get("Regex"))
    return None


def _describe(part: dict | None) -> str:
    if not part:
        return "none"
    if part.get("type") == "Sequence":
        inner = part.get("pretokenizers") or part.get("normalizers") or part.get("decoders") or []
        return "Sequence[" + ", ".join(_describe(p) for p in inner) + "]"
    return str(part.get("type"))


def tokenizer_metadata(tokenizer, config, path: str) -> dict:
    """What the file says about the tokenizer: the kind, tokens, types, merges, special ids,
    add-BOS/EOS, chat template. Refuses a tokenizer llama.cpp would split differently."""
    gguf = _import_gguf()
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    kind = model.get("type")
    if kind != "BPE":
        raise ConfigError(f"cannot write a {kind} tokenizer to GGUF", path=path,
                          expected="a byte-level BPE tokenizer (GPT-2, SmolLM2, Qwen2 or "
                                   "Llama-3 style)")
    if model.get("byte_fallback"):
        raise ConfigError("cannot write a SentencePiece-style BPE tokenizer (byte fallback, "
                          "Llama-2/Mistral style) to GGUF; preflab export writes byte-level BPE "
                          "only", path=path, expected="a byte-level BPE tokenizer")
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    decoder = spec.get("decoder") or {}
    normalizer = spec.get("normalizer")
    if pre is None or decoder.get("type") != "ByteLevel" or (
            normalizer and normalizer.get("type") != "NFC"):
        raise ConfigError(
            f"cannot write this BPE tokenizer to GGUF: pre-tokenizer "
            f"{_describe(spec.get('pre_tokenizer'))}, decoder {_describe(decoder)}, normalizer "
            f"{_describe(normalizer)}", path=path,
            expected="byte-level BPE as llama.cpp splits it: a ByteLevel pre-tokenizer and "
                     "decoder, alone or after individual Digits (smollm) or the Qwen2 or Llama-3 "
                     "Split")

    by_id = {i: t for t, i in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    n_vocab = config.vocab_size
    if max(by_id) >= n_vocab:
        raise ConfigError(f"the tokenizer has token id {max(by_id)}, past the model's "
                          f"vocab_size {n_vocab}", path=path,
                          expected="a tokenizer no larger than the embedding")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # rows the embedding has and the tokenizer never produces
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i].get("special")
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    special = {}
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is None and name in ("bos", "eos"):
            token_id = getattr(config, f"{name}_token_id", None)
            token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
        if isinstance(token_id, int):
            special[name] = token_id
    template = tokenizer.chat_template
    return {
        "pre": pre, "tokens": tokens, "types": types, "merges": merges, "special": special,
        "add_bos": len(full) > len(plain) and full[0] == special.get("bos"),
        "add_eos": len(full) > len(plain) and full[-1] == special.get("eos"),
        "chat_template": template,
    }


# --- writing ---------------------------------------------------------------------------------------

def write_metadata(writer, config, arch: str, wanted: str, name: str, vocab: dict) -> None:
    gguf = _import_gguf()
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(_rope_parameters(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_types[wanted])
    if wanted == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for key, token_id in vocab["special"].items():
        adders[key](token_id)
    writer.add_add_bos_token(bool(vocab["add_bos"]))
    writer.add_add_eos_token(bool(vocab["add_eos"]))
    template = vocab["chat_template"]
    if isinstance(template, dict):  # several named templates: "default" is the plain key
        writer.add_chat_template([{"name": k, "template": v} for k, v in template.items()])
    elif template:
        writer.add_chat_template(template)


def export(cfg: ExportConfig) -> dict:
    """Write ``cfg.model`` as the GGUF file ``cfg.gguf``; return counts for the summary."""
    gguf = _import_gguf()
    import numpy as np
    from safetensors import safe_open

    from preflab import models

    root = check_model_dir(cfg.model)
    config = read_config(root)
    arch = check_architecture(config, cfg.model)
    files = weight_files(root)
    plan = plan_tensors(config, list(files), arch, cfg.model)
    tokenizer = models.load_tokenizer(str(root))
    vocab = tokenizer_metadata(tokenizer, config, cfg.model)

    name = root.resolve().name if root.resolve().name != "final" else root.resolve().parent.name
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    heads = {"attn_q": config.num_attention_heads, "attn_k": kv_heads}

    handles: dict[Path, object] = {}

    def read(hf_name: str, gguf_name: str):
        file = files[hf_name]
        if file not in handles:
            handles[file] = safe_open(file, framework="pt")
        array = handles[file].get_tensor(hf_name).float().numpy()
        part = gguf_name.split(".")[-2]  # blk.N.attn_q.weight -> attn_q
        if arch in PERMUTED and part in heads:
            array = permute_rotary(array, heads[part])
        return array

    target = Path(cfg.gguf).expanduser()
    tmp = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.",
                                      suffix=".tmp", delete=False)
    tmp.close()
    writer = gguf.GGUFWriter(tmp.name, arch)
    counts = {"f32": 0, "f16": 0, "q8_0": 0}
    total = 0
    try:
        write_metadata(writer, config, arch, cfg.type, name, vocab)
        # The tensor table precedes the data, so shapes and types are declared first; each
        # tensor is then read, converted and written one at a time (memory: one tensor).
        kinds = []
        for hf_name, gguf_name in plan:
            with safe_open(files[hf_name], framework="pt") as f:
                shape = tuple(f.get_slice(hf_name).get_shape())
            kind = tensor_kind(gguf_name, shape, cfg.type)
            nbytes = (int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, kind)))
                      if kind == gguf.GGMLQuantizationType.Q8_0
                      else int(np.prod(shape)) * (4 if kind == gguf.GGMLQuantizationType.F32 else 2))
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)
            kinds.append(kind)
            counts[kind.name.lower()] += 1
            total += nbytes
        writer.write_header_to_file(Path(tmp.name))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = progress_bar(total=len(plan), desc="export", enabled=cfg.progress, unit="tensors")
        try:
            for (hf_name, gguf_name), kind in zip(plan, kinds):
                writer.write_tensor_data(encode_tensor(read(hf_name, gguf_name), kind))
                bar.update(1)
        finally:
            bar.close()
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp.name, 0o666 & ~umask)  # the mode a plain open() gives, not tempfile's 0600
        os.replace(tmp.name, target)
    except BaseException:
        writer.close()
        Path(tmp.name).unlink(missing_ok=True)
        raise
    notes = []
    window = getattr(config, "sliding_window", None)
    if config.model_type == "mistral" and window and window < config.max_position_embeddings:
        notes.append(f"the sliding window ({window}) is not written: llama.cpp attends over the "
                     f"whole context, as the model does up to {window} tokens")
    return {"tensors": len(plan), "bytes": target.stat().st_size, "counts": counts,
            "arch": arch, "file": str(target), "notes": notes}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # `preflab export MODEL_DIR --gguf ...`
        argv = ["--model", *argv]
    cfg = parse_config(ExportConfig, argv, prog="preflab export", description=__doc__)
    stats = export(cfg)
    kinds = ", ".join(f"{n} {k}" for k, n in stats["counts"].items() if n)
    print(f"{stats['tensors']} tensors ({kinds}), {stats['bytes']:,} bytes, --type {cfg.type}, "
          f"{stats['arch']} -> {stats['file']}")
    for note in stats["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from preflab.runtime.exits import run_module

    sys.exit(run_module(main))
