"""What a model's ``config.json`` says about its memory: parameters, LoRA parameters, activations.

Nothing here loads weights or imports torch. ``read_config`` finds the file (a local
directory, a path to ``config.json``, or a hub id); ``parse_arch`` turns it into an ``Arch``
for the families counted exactly (``SUPPORTED``); ``Arch.linears`` lists the linear layers of
one block, from which parameters and LoRA parameters are counted; ``activation_bytes`` is
the estimate of what a training forward keeps for backward.

Activations, in bytes per token (``b`` = bytes of the dtype; H hidden, I intermediate, V
vocabulary, nh heads of hd dims, L layers, T sequence length, r LoRA rank), as measured with
``torch.autograd.graph.saved_tensors_hooks`` on transformers' implementations:

    per layer   norms      RMSNorm: 4H + 4 (float32 input and 1/rms) + bH (normalised x, for
                           the weight's gradient; full fine-tuning only). LayerNorm: bH + 8.
                           GPT-NeoX's parallel residual: both norms read one input.
                linears    full fine-tuning: each distinct input once, bH (after each norm)
                           + bI (into the down projection); LoRA: a float32 copy of the input
                           of every adapted layer (PEFT casts it to the adapter's dtype; with
                           b = 4 the inputs are shared, not copied) + 4r per adapted layer
                attention  b(q + k + v + output): Llama style 4 nh hd (k, v repeated to nh
                           heads under a padding mask); GPT-2 3H + H (q, k, v are views of one
                           3H output); GPT-NeoX 3H + 2H + H (rotary makes new q, k)
                           + 4 nh (float32 log-sum-exp) + bT (SDPA's padding mask, [B,1,T,T]
                           per layer) with --attention sdpa; eager keeps the scores instead:
                           nh T (4 + b) (float32 softmax and its cast; 4 for float32)
                MLP        gated (SiLU): 3bI (gate, its activation, up); GPT-2's gelu_new: 4bI;
                           gelu/relu: bI
                dropout    1 byte per element of each residual dropout with p > 0 (a CUDA bool
                           mask; PPO switches dropout off)
                (under LoRA, layer 0's first norm keeps nothing: its input needs no gradient)
    once        final norm as above; an LM head keeps no logits (``preflab.models.fused_head`` makes
                them chunk by chunk and recomputes them in backward): it saves its input,
                sH (s bytes of the residual stream, the weights' dtype: float32 under the
                mixed modes' full fine-tuning, where autocast leaves the stream in float32,
                whether or not the head trains) + 13 (float32 log-normaliser, int64 target,
                bool mask); a scalar head bH; token ids 8 when the embedding trains (+8
                position ids for GPT-2); rotary cos and sin 2 b rot

With gradient checkpointing each layer keeps only its input (bH per layer), and backward
recomputes one layer at a time: L bH + one layer + the parts kept once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from preflab.errors import ConfigError, ModelLoadError

SUPPORTED = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox")
ACTIVATION_KEEPS = {"gelu_new": 4, "gelu_fast": 4}
"""I-sized tensors an activation function keeps: the tanh formulas written in Python keep
four (input, tanh, 0.5 x, 1 + tanh); fused ones (gelu, relu, silu, ...) keep their input."""


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool
    source: str  # which tensor feeds it: "attn_in", "attn_out", "mlp_in", "mlp_act"

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder, as far as memory is concerned."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    positions: int  # learned position embeddings (GPT-2); 0 for rotary models
    norm: str  # "rms" (weight only) or "layer" (weight and bias)
    gated: bool  # gate/up/down MLP
    act_keeps: int  # I-sized tensors the activation function keeps
    parallel_residual: bool  # GPT-NeoX: attention and MLP norms read the same input
    rotary_dim: int
    resid_dropout: float  # p of the dropouts on the residual branch (and embeddings)
    attn_dropout: float
    block: tuple[Linear, ...]

    @property
    def norm_params(self) -> int:
        return self.hidden * (1 if self.norm == "rms" else 2)

    def layer_params(self) -> int:
        return sum(lin.params for lin in self.block) + 2 * self.norm_params

    def body_params(self) -> int:
        """Embeddings, blocks and final norm: what a sequence classifier keeps of the LM."""
        embed = (self.vocab + self.positions) * self.hidden
        return embed + self.layers * self.layer_params() + self.norm_params

    def lm_params(self) -> int:
        return self.body_params() + (0 if self.tied else self.vocab * self.hidden)

    def score_params(self) -> int:
        """The reward/value head of AutoModelForSequenceClassification: H -> 1, no bias."""
        return self.hidden

    def lora_targets(self, names: list[str] | None) -> tuple[Linear, ...]:
        """The block's linear layers that get adapters: all (preflab's default) or ``names``."""
        if not names:
            return self.block
        known = {lin.name.rsplit(".", 1)[-1] for lin in self.block}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ConfigError(f"no linear layer named {', '.join(unknown)} in a "
                              f"{self.model_type} block", field="lora_target_modules",
                              expected=", ".join(sorted(known)))
        return tuple(lin for lin in self.block if lin.name.rsplit(".", 1)[-1] in names)

    def lora_params(self, rank: int, names: list[str] | None = None) -> int:
        """``r (in + out)`` per adapted layer (A is r x in, B is out x r), times the layers."""
        return self.layers * sum(rank * (lin.in_features + lin.out_features)
                                 for lin in self.lora_targets(names))


def read_config(model: str) -> dict:
    """``config.json`` of a local directory, a path to the file, or a hub id (never weights);
    for a GGUF model, the config transformers reads from the file's metadata."""
    from preflab.models import gguf_location

    path = Path(model).expanduser()
    gguf = gguf_location(model)
    if gguf is not None:
        return _gguf_config(model, *gguf)
    looks_local = path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1
    if looks_local:
        if path.is_dir():
            path = path / "config.json"
            if not path.is_file():
                raise ConfigError("no config.json: this is not a Hugging Face model directory",
                                  path=str(path.parent))
        elif not path.is_file():
            raise ConfigError("no such file or directory", path=model,
                              expected="a model directory, a config.json file or a hub id")
    else:
        path = _download_config(model)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the model config: {exc}", path=str(path)) from None
    if not isinstance(config, dict):
        raise ConfigError("the model config is not a JSON object", path=str(path))
    return config


def _gguf_config(model: str, directory: str, name: str) -> dict:
    from transformers import AutoConfig

    from preflab.models import import_gguf

    import_gguf(model)
    try:
        return AutoConfig.from_pretrained(directory, gguf_file=name).to_dict()
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the model config from the GGUF file: {exc}",
                          path=model) from None


def _download_config(repo_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, "config.json"))
    except (ImportError, OSError, ValueError) as exc:  # hub errors are OSError or ValueError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"not a local path, and config.json could not be fetched from the "
                             f"hub: {first}", path=repo_id) from None


def _get(config: dict, *keys: str):
    """The first of ``keys`` that ``config`` sets (families name the same thing differently)."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise ConfigError(f"the model config has no {keys[0]!r}", field=keys[0],
                      expected=f"a {config.get('model_type')} config.json")


def _rotary_fraction(config: dict) -> float:
    for source in (config, config.get("rope_parameters") or {}, config.get("rope_scaling") or {}):
        for key in ("partial_rotary_factor", "rotary_pct"):
            if source.get(key) is not None:
                return float(source[key])
    return 1.0


def parse_arch(config: dict) -> Arch:
    """The ``Arch`` of a Llama/Mistral/Qwen2, GPT-2 or GPT-NeoX ``config.json``."""
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        raise ConfigError(f"model_type {kind!r} is not one the planner counts",
                          field="model_type", expected=", ".join(SUPPORTED))
    if kind == "gpt2":
        return _gpt2(config)
    if kind == "gpt_neox":
        return _gpt_neox(config)
    return _llama(config)


def _llama(config: dict) -> Arch:
    """Llama, Mistral, Qwen2: RMSNorm, rotary, gated SiLU MLP; Qwen2 has q/k/v biases."""
    H, heads = int(_get(config, "hidden_size")), int(_get(config, "num_attention_heads"))
    kv = int(config.get("num_key_value_heads") or heads)
    hd = int(config.get("head_dim") or H // heads)
    inter = int(_get(config, "intermediate_size"))
    qwen2 = config["model_type"] == "qwen2"
    qkv_bias = qwen2 or bool(config.get("attention_bias", False))
    o_bias = not qwen2 and bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    return Arch(
        model_type=config["model_type"], hidden=H, layers=int(_get(config, "num_hidden_layers")),
        heads=heads, kv_heads=kv, head_dim=hd, intermediate=inter,
        vocab=int(_get(config, "vocab_size")), tied=bool(config.get("tie_word_embeddings", False)),
        positions=0, norm="rms", gated=True, act_keeps=1, parallel_residual=False,
        rotary_dim=int(hd * _rotary_fraction(config)), resid_dropout=0.0,
        attn_dropout=float(config.get("attention_dropout", 0.0)), block=(
            Linear("self_attn.q_proj", H, heads * hd, qkv_bias, "attn_in"),
            Linear("self_attn.k_proj", H, kv * hd, qkv_bias, "attn_in"),
            Linear("self_attn.v_proj", H, kv * hd, qkv_bias, "attn_in"),
            Linear("self_attn.o_proj", heads * hd, H, o_bias, "attn_out"),
            Linear("mlp.gate_proj", H, inter, mlp_bias, "mlp_in"),
            Linear("mlp.up_proj", H, inter, mlp_bias, "mlp_in"),
            Linear("mlp.down_proj", inter, H, mlp_bias, "mlp_act")))


def _gpt2(config: dict) -> Arch:
    """GPT-2: learned positions, LayerNorm, fused q/k/v (Conv1D, biases everywhere), tied head."""
    H = int(_get(config, "n_embd", "hidden_size"))
    heads = int(_get(config, "n_head", "num_attention_heads"))
    inter = int(config.get("n_inner") or 4 * H)
    act = config.get("activation_function", "gelu_new")
    dropout = max(float(config.get("resid_pdrop", 0.1)), float(config.get("embd_pdrop", 0.1)))
    return Arch(
        model_type="gpt2", hidden=H, layers=int(_get(config, "n_layer", "num_hidden_layers")),
        heads=heads, kv_heads=heads, head_dim=H // heads, intermediate=inter,
        vocab=int(_get(config, "vocab_size")), tied=bool(config.get("tie_word_embeddings", True)),
        positions=int(_get(config, "n_positions", "max_position_embeddings")), norm="layer",
        gated=False, act_keeps=ACTIVATION_KEEPS.get(act, 1), parallel_residual=False,
        rotary_dim=0, resid_dropout=dropout,
        attn_dropout=float(config.get("attn_pdrop", 0.1)), block=(
            Linear("attn.c_attn", H, 3 * H, True, "attn_in"),
            Linear("attn.c_proj", H, H, True, "attn_out"),
            Linear("mlp.c_fc", H, inter, True, "mlp_in"),
            Linear("mlp.c_proj", inter, H, True, "mlp_act")))


def _gpt_neox(config: dict) -> Arch:
    """GPT-NeoX (Pythia): LayerNorm, fused q/k/v, partial rotary, parallel residual, untied head."""
    H, heads = int(_get(config, "hidden_size")), int(_get(config, "num_attention_heads"))
    inter, hd = int(_get(config, "intermediate_size")), H // heads
    bias = bool(config.get("attention_bias", True))
    return Arch(
        model_type="gpt_neox", hidden=H, layers=int(_get(config, "num_hidden_layers")),
        heads=heads, kv_heads=heads, head_dim=hd, intermediate=inter,
        vocab=int(_get(config, "vocab_size")), tied=bool(config.get("tie_word_embeddings", False)),
        positions=0, norm="layer", gated=False,
        act_keeps=ACTIVATION_KEEPS.get(config.get("hidden_act", "gelu"), 1),
        parallel_residual=bool(config.get("use_parallel_residual", True)),
        rotary_dim=int(hd * _rotary_fraction(config)),
        resid_dropout=float(config.get("hidden_dropout", 0.0)),
        attn_dropout=float(config.get("attention_dropout", 0.0)), block=(
            Linear("attention.query_key_value", H, 3 * H, bias, "attn_in"),
            Linear("attention.dense", H, H, bias, "attn_out"),
            Linear("mlp.dense_h_to_4h", H, inter, True, "mlp_in"),
            Linear("mlp.dense_4h_to_h", inter, H, True, "mlp_act")))


def _norm_bytes(arch: Arch, b: int, weight_trained: bool) -> int:
    if arch.norm == "rms":  # x.float(), 1/rms, and the normalised x for the weight's gradient
        return 4 * arch.hidden + 4 + (b * arch.hidden if weight_trained else 0)
    return b * arch.hidden + 8  # LayerNorm: its input, mean and 1/std


def layer_bytes(arch: Arch, *, b: int, seq_len: int, lora_rank: int = 0,
                lora_targets: list[str] | None = None, dropout: bool = True,
                attention: str = "sdpa") -> dict[str, int]:
    """Bytes one block keeps for backward, per token, by part (see the module docstring)."""
    H, inter = arch.hidden, arch.intermediate
    full = lora_rank == 0
    norm = _norm_bytes(arch, b, full)
    norms = norm + 8 if arch.parallel_residual else 2 * norm
    widths = {"attn_in": H, "mlp_in": H, "mlp_act": inter}  # attn_out: kept by the attention
    if full:
        linears = b * sum(widths.values())
    else:
        adapted = arch.lora_targets(lora_targets)
        if b < 4:  # each adapter casts its input to float32: one copy per adapted layer
            linears = sum(4 * lin.in_features for lin in adapted)
        else:
            linears = 4 * sum(widths[s] for s in {lin.source for lin in adapted} if s in widths)
        linears += 4 * lora_rank * len(adapted)
    hd_all = arch.heads * arch.head_dim
    if arch.model_type == "gpt2":
        qkvo = 3 * H + hd_all
    elif arch.model_type == "gpt_neox":
        qkvo = 3 * H + 2 * hd_all + hd_all
    else:
        qkvo = 4 * hd_all
    attn = b * qkvo
    if attention == "sdpa":
        attn += 4 * arch.heads + b * seq_len  # log-sum-exp; the padding mask [B, 1, T, T]
    else:
        attn += arch.heads * seq_len * (4 + (b if b < 4 else 0))
        if dropout and arch.attn_dropout > 0:
            attn += arch.heads * seq_len * (1 + b)
    mlp = b * inter * (3 if arch.gated else arch.act_keeps)
    drop = 2 * H if dropout and arch.resid_dropout > 0 else 0
    return {"norms": norms, "linear_inputs": linears, "attention": attn, "mlp": mlp,
            "dropout": drop}


def activation_bytes(arch: Arch, *, b: int, rows: int, seq_len: int, head: str = "lm",
                     lora_rank: int = 0, lora_targets: list[str] | None = None,
                     gradient_checkpointing: bool = False, dropout: bool = True,
                     attention: str = "sdpa", stream: int | None = None) -> dict[str, int]:
    """Bytes kept for backward by one training forward of ``rows`` sequences of ``seq_len``.

    ``head`` is ``lm`` (token log-probs through the fused head, the policy) or ``scalar`` (a
    reward or value head, always trained). ``stream``: bytes per element of the residual
    stream, the dtype the weights are held in (default ``b``). Every position is counted as
    scored: the fused head saves only the scored (completion) positions, so a long prompt
    keeps less. Returns the parts and their ``total``.
    """
    tokens = rows * seq_len
    H = arch.hidden
    full = lora_rank == 0
    layer = sum(layer_bytes(arch, b=b, seq_len=seq_len, lora_rank=lora_rank,
                            lora_targets=lora_targets, dropout=dropout,
                            attention=attention).values())
    if gradient_checkpointing:
        blocks = arch.layers * b * H + layer  # each layer's input; one layer recomputed
    else:
        blocks = arch.layers * layer
        if not full:  # layer 0's first norm reads the frozen embeddings: it keeps nothing
            norm = _norm_bytes(arch, b, False)
            blocks -= norm + 8 if arch.parallel_residual else norm
    final = _norm_bytes(arch, b, full)
    if head == "lm":  # the fused head's input, log-normaliser, target id and mask
        final += (b if stream is None else stream) * H + 4 + 8 + 1
    else:
        final += b * H  # the scalar head's input
    ids = 8 if full else 0  # the embedding's ids, for its gradient
    embed = ids + (8 if arch.positions and full else 0) + 2 * b * arch.rotary_dim
    embed += H if dropout and arch.resid_dropout > 0 else 0
    parts = {"blocks": blocks * tokens, "final": final * tokens, "embeddings": embed * tokens}
    parts["total"] = sum(parts.values())
    return parts


HEAD_CHUNK_BYTES = 64 * 2**20
"""``preflab.models.fused_head.CHUNK_BYTES``, copied so that planning needs no torch (a test ties them)."""


def head_chunk(vocab: int) -> int:
    """Positions whose logits the fused head makes at once: ``fused_head.default_chunk``."""
    return max(16, HEAD_CHUNK_BYTES // (4 * max(1, vocab)))


def head_working_bytes(arch: Arch, *, b: int, tokens: int, stream: int | None = None,
                       trains: bool = False) -> dict[str, int]:
    """The most the fused LM head (``preflab.models.fused_head``) holds at once beyond the saved
    activations, in its forward and in its backward, over ``tokens`` scored positions: read
    from the code and measured with the profiler's allocation events (tests/test_plan.py).

    Chunks of ``head_chunk(V)`` positions: the first has ``c`` = min(chunk, tokens), the
    second ``c2`` = min(chunk, tokens - chunk). ``s = stream``: bytes of the head's weights and
    input (default ``b``); ``trains``: the head's weights get a gradient.

        forward   8cV: one chunk's float32 logits and logsumexp's exponentials of them (the
                  compute dtype's logits and their float32 copy, (b + 4) cV, are fewer); or,
                  when autocast casts a float32 head (s > b), that cast and its output,
                  b (VH + cV), if more
        backward  per chunk, the recomputed logits, their float32 gradient dz and its cast
                  back, (2b + 4) cV (in float32 dz is made in the logits: 4cV); under
                  autocast a float32 head's weight cast, b VH (then, as large, its gradient
                  before the cast back); when the head trains, its weight's gradient, s VH,
                  beside the running sum of the chunks before (another s VH from the second
                  chunk on); + the gradient of the head's input, sH a position
    """
    V, H = arch.vocab, arch.hidden
    s = b if stream is None else stream
    chunk = head_chunk(V)
    c, c2 = min(chunk, tokens), min(chunk, tokens - chunk)
    cast = b * V * H if s > b else 0
    forward = max(8 * c * V, cast + b * c * V if cast else 0)
    per_position = (4 if b == 4 else 2 * b + 4) * V  # logits, dz, its cast
    grad = s * V * H if trains else 0
    backward = per_position * c + cast + grad
    if c2 > 0:  # the running sum of the first chunk's gradient is held from here on
        backward = max(backward, per_position * c2 + cast + 2 * grad)
    return {"forward": forward, "backward": backward + s * H * tokens}


def kv_cache_bytes(arch: Arch, *, b: int, rows: int, seq_len: int) -> int:
    """Keys and values of every layer for ``rows`` sequences of ``seq_len`` tokens."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * b * rows * seq_len
