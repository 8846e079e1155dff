"""Loading, adapting and saving causal language models and their tokenizers.

Safe by default: pickle-based weight files (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) can run
code when loaded, so they are refused unless ``allow_pickle=True``; a model's own Python
code runs only with ``trust_remote_code=True``. A model that is neither on disk nor reachable
fails in seconds (``check_model_source``), not after a minute of download retries.

A model may also be one GGUF file (llama.cpp's format), given as ``model.gguf`` or as a
directory that holds exactly one ``.gguf`` and no ``config.json`` (``gguf_location``).
transformers reads its config, tokenizer and chat template from the file and dequantizes the
weights to the asked dtype; the loaded model is then an ordinary one (``_from_gguf`` drops
the marker that would stop ``save_pretrained``), so a run's ``final/`` is safetensors.

Beside the loading path: ``logprobs`` (token log-probs of a causal LM, through ``fused_head``,
which computes them chunk by chunk without a ``[B, T, V]`` logits tensor), ``heads`` (scalar
heads on a transformer body: a reward per sequence, a value per token) and ``tiny`` (the small
random Llamas and word-level tokenizers that tests and the built-in world build).

May import: errors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from preflab.errors import ConfigError, ModelLoadError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
GGUF_SUFFIX = ".gguf"
GGUF_INSTALL = ("reading or writing a .gguf model needs the `gguf` package, which is not "
                "installed; install it with `pip install 'preflab[gguf]'` (or `pip install gguf`)")
# The tokenizer classes that mean "the generic fast tokenizer from tokenizer.json". Loading
# these through AutoTokenizer can pick a model-specific slow class instead (transformers v5
# maps by model type), which re-tokenizes differently; load them as what they are.
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


DEVICES = "auto, cpu, cuda, cuda:N or mps"


# A hub id, of a model or a `datasets` dataset: "name" or "owner/name".
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_local_path(text: str, *, suffixes: tuple[str, ...] = ()) -> bool:
    """Whether ``text`` can only mean a path on this machine, not a hub id: it exists; starts
    with ``.``, ``/`` or ``~``; has a separator no hub id has (a second ``/``, or ``\\`` on
    Windows); ends with one of ``suffixes``; or is not spelled like a hub id at all."""
    if Path(os.path.expanduser(text)).exists() or text.startswith((".", "/", "~")):
        return True
    separators = {os.sep, os.altsep} - {None, "/"}
    if any(s in text for s in separators) or text.count("/") > 1:
        return True
    return text.lower().endswith(suffixes) or not HUB_ID.fullmatch(text)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else must be a device this machine has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {name!r}: {exc}", field="device",
                             expected=DEVICES) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {name} asked for, but no CUDA GPU is visible",
                                 field="device", expected=DEVICES)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelLoadError(f"--device {name}: this machine has {count} CUDA GPU(s)",
                                 field="device", expected=f"cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not _mps_available():
        raise ModelLoadError("--device mps asked for, but MPS (an Apple GPU) is not available "
                             "here", field="device", expected=DEVICES)
    elif device.type == "meta":
        raise ModelLoadError("--device meta holds shapes but no data: nothing can train or run "
                             "there", field="device", expected=DEVICES)
    elif device.type not in ("cpu", "cuda", "mps"):
        backend = getattr(torch, device.type, None)  # torch.xpu and the like
        if not (hasattr(backend, "is_available") and backend.is_available()):
            raise ModelLoadError(f"--device {name}: no {device.type} device is available here",
                                 field="device", expected=DEVICES)
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def gguf_location(path: str, *, flag: str | None = "--model") -> tuple[str, str] | None:
    """``(directory, file name)`` when ``path`` means a GGUF model: a ``.gguf`` file, or a
    directory with no ``config.json`` that holds exactly one ``.gguf``. None otherwise (a
    Hugging Face directory or a hub id). A directory holding several is a ModelLoadError."""
    local = Path(os.path.expanduser(path))
    if local.is_file() and local.suffix.lower() == GGUF_SUFFIX:
        return str(local.parent), local.name
    if not local.is_dir() or (local / "config.json").is_file():
        return None
    found = sorted(p.name for p in local.iterdir()
                   if p.is_file() and p.suffix.lower() == GGUF_SUFFIX)
    if len(found) > 1:
        raise ModelLoadError(f"{flag + ': ' if flag else ''}the directory holds {len(found)} "
                             f".gguf files ({', '.join(found)}) and no config.json",
                             path=path, field=flag.lstrip("-").replace("-", "_") if flag else None,
                             expected="one of them as the path, e.g. "
                                      f"{Path(path) / found[0]}")
    return (str(local), found[0]) if found else None


def import_gguf(path: str | None = None):
    """The ``gguf`` package (transformers reads .gguf files with it, ``preflab export`` writes
    them), or a ModelLoadError that names the extra to install."""
    try:
        import gguf
    except ImportError:
        raise ModelLoadError(GGUF_INSTALL, path=path) from None
    return gguf


def _dequantized(gguf_file: str) -> dict:
    """``from_pretrained`` arguments that ask for dense weights: with the ``kernels`` package,
    transformers would keep a quantized file's weights packed in blocks, which cannot train."""
    try:
        from transformers import GgufConfig
    except ImportError:  # a transformers that always dequantizes
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_file, dequantize=True)}


@contextlib.contextmanager
def _no_gguf_bar():
    """transformers' GGUF reader draws its own tqdm bar per load, which its progress-bar switch
    (``quiet_transformers``) does not reach: switch that one off while a file loads."""
    try:
        import transformers.modeling_gguf_pytorch_utils as reader
    except ImportError:
        reader = None
    bar = getattr(reader, "tqdm", None)
    if bar is None:
        yield
        return
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar


def _from_gguf(model):
    """A model loaded from GGUF carries transformers' GGUF "quantizer", although its weights
    were dequantized on load; it would make ``save_pretrained`` refuse the model. Drop it."""
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 where the GPU supports it, float32 otherwise (CPU, MPS, old GPUs)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _is_local(path: str) -> bool:
    return Path(path).exists()


# --- Where a model comes from: a local directory, the Hugging Face cache, or the hub ---------

HUB_TIMEOUT_S = 3.0  # for one TCP connection to the hub; a reachable hub answers in well under
_HUB_STATUS: dict[tuple[str, int], str | None] = {}  # (host, port) -> why unreachable, or None


def check_model_source(path: str, *, flag: str | None = "--model", network: bool = True) -> None:
    """Fail in seconds, with a hint, on a model that cannot be loaded from where it is said to be.

    A local path (``looks_like_local_path``) must be an existing directory. A hub id
    must be in the local Hugging Face cache, or the hub (``HF_ENDPOINT``, default
    https://huggingface.co, or the proxy in front of it) must accept a connection within
    ``HUB_TIMEOUT_S``: unchecked, an offline machine spends about 50 s in download retries
    before the loader gives up. Raises ModelLoadError naming ``flag`` (None: no flag).
    ``network=False`` checks only what needs no network (a local path); the loaders check
    the rest.
    """
    field = flag.lstrip("-").replace("-", "_") if flag else None
    said = f"{flag}: " if flag else ""
    local = Path(os.path.expanduser(path))
    if local.exists():
        if not local.is_dir() and local.suffix.lower() != GGUF_SUFFIX:
            raise ModelLoadError(f"{said}a file, not a model directory", path=path, field=field,
                                 expected="a Hugging Face model directory (with config.json) "
                                          "or a .gguf file")
        if gguf_location(str(local), flag=flag) is not None:  # several .gguf files: an error
            import_gguf(path)
        return
    if looks_like_local_path(path):
        what = "file" if path.lower().endswith(GGUF_SUFFIX) else "directory"
        raise ModelLoadError(f"{said}no such {what}", path=path, field=field,
                             expected="a local model directory, a .gguf file, or a hub id "
                                      "such as org/name")
    if not network or _in_hub_cache(path):
        return
    hint = (f"give a local model directory, or download it where the hub can be reached "
            f"(`hf download {path}`) and copy the cache (~/.cache/huggingface/hub) here")
    if _hub_offline():
        raise ModelLoadError(f"{said}not a local directory nor in the Hugging Face cache, "
                             f"and HF_HUB_OFFLINE is set; {hint}", path=path, field=field)
    hint += ", then set HF_HUB_OFFLINE=1"
    endpoint = _hub_endpoint()
    problem = hub_unreachable(endpoint)
    if problem:
        raise ModelLoadError(f"{said}not a local directory, so it would come from the "
                             f"Hugging Face hub, but {endpoint} cannot be reached ({problem}); "
                             f"{hint}", path=path, field=field)


def _cache_only(path: str) -> bool:
    """Whether ``path`` is a hub model in the local cache while the hub cannot be reached: the
    loaders then pass ``local_files_only``, or they would spend minutes in retries first."""
    if Path(path).exists() or not _in_hub_cache(path):
        return False
    return _hub_offline() or hub_unreachable(_hub_endpoint()) is not None


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except (ImportError, ValueError):  # no huggingface_hub, or an id it refuses
        return False


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_unreachable(endpoint: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """Why no TCP connection to ``endpoint`` (or its proxy) was made within ``timeout`` seconds;
    None when one was. Name resolution runs in a daemon thread, so it is bounded too. The
    answer is kept for the rest of the process."""
    import socket
    import threading
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if host and proxy and not urllib.request.proxy_bypass(host):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname, via.port or 80
    if not host:
        return f"no host in {endpoint!r}"
    if (host, port) in _HUB_STATUS:
        return _HUB_STATUS[host, port]
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    _HUB_STATUS[host, port] = outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:g} s"
    return _HUB_STATUS[host, port]


def check_local_weights(path: Path, allow_pickle: bool) -> None:
    """Refuse a local directory that is not a model, or whose weights are pickle files."""
    if not path.is_dir():
        raise ModelLoadError("not a model directory", path=str(path))
    files = [p.name for p in path.iterdir()]
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            "no config.json: this is not a Hugging Face model directory", path=str(path)
        )
    has_safe = any(n.endswith(".safetensors") for n in files)
    has_pickle = any(n.endswith(PICKLE_SUFFIXES) for n in files)
    if not has_safe and has_pickle and not allow_pickle:
        raise ModelLoadError(
            "the weights are pickle files, which can run arbitrary code when loaded; "
            "convert them to safetensors, or pass --allow-pickle if you trust their source",
            path=str(path),
        )


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars; preflab reports loading itself."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (the EOS token if it had none)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = os.path.expanduser(path)
    check_model_source(path, flag=None)
    quiet_transformers()
    gguf = gguf_location(path, flag=None)
    try:
        if gguf is not None:
            import_gguf(path)
            tokenizer = AutoTokenizer.from_pretrained(gguf[0], gguf_file=gguf[1])
        else:
            cls: Any = AutoTokenizer
            config_file = Path(path) / "tokenizer_config.json"
            if config_file.is_file():
                declared = json.loads(config_file.read_text()).get("tokenizer_class")
                if declared in GENERIC_TOKENIZER_CLASSES:
                    cls = PreTrainedTokenizerFast
            tokenizer = cls.from_pretrained(path, trust_remote_code=trust_remote_code,
                                            local_files_only=_cache_only(path))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load a tokenizer: {_first_line(exc)}", path=path) from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelLoadError("the tokenizer has neither a pad nor an EOS token", path=path)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(auto_cls, path: str, *, what: str, dtype: torch.dtype, allow_pickle: bool,
                     trust_remote_code: bool, attn_implementation: str = "auto", **kwargs):
    """The one safe loading path: pickle check, safetensors only, errors as ModelLoadError.
    ``attn_implementation``: transformers' attention kernel; ``auto`` leaves its choice."""
    path = os.path.expanduser(path)
    if attn_implementation != "auto":
        kwargs["attn_implementation"] = attn_implementation
    check_model_source(path, flag=None)
    quiet_transformers()
    gguf = gguf_location(path, flag=None)
    if gguf is not None:
        import_gguf(path)
        try:
            with _no_gguf_bar():
                return _from_gguf(auto_cls.from_pretrained(
                    gguf[0], gguf_file=gguf[1], dtype=dtype, **_dequantized(gguf[1]), **kwargs))
        except (OSError, ValueError, KeyError) as exc:  # KeyError: an architecture it lacks
            raise ModelLoadError(f"could not load {what} from the GGUF file: "
                                 f"{_first_line(exc)}", path=path) from None
    if _is_local(path):
        check_local_weights(Path(path), allow_pickle)
    if _cache_only(path):  # transformers 5 does not pass local_files_only on to its adapter check
        kwargs.update(local_files_only=True, adapter_kwargs={"local_files_only": True})
    try:
        return auto_cls.from_pretrained(
            path,
            dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        where = "" if _is_local(path) else "it is not a local directory, and the hub said: "
        raise ModelLoadError(f"could not load {what}: {where}{_first_line(exc)}", path=path) from None


def load_causal_lm(
    path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    attn_implementation: str = "auto",
):
    """Any causal LM from a local directory or a hub id, in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, path, what="the model", dtype=dtype,
                             allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                             attn_implementation=attn_implementation)
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def load_sequence_classifier(
    path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    pad_token_id: int | None = None,
    attn_implementation: str = "auto",
):
    """``AutoModelForSequenceClassification`` with one label, from a reward model or any causal LM.

    From a causal LM the body is loaded and the head is new (Hugging Face initialises it);
    its LM head is dropped. ``pad_token_id`` is written into the config (where given) so
    that the saved model pools at the right token when used through Hugging Face.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # A causal LM loaded as a classifier reports its new head and dropped LM head: expected.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = _from_pretrained(AutoModelForSequenceClassification, path,
                                 what="a sequence-classification model", dtype=dtype,
                                 allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                 attn_implementation=attn_implementation, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model.to(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def find_lora_targets(model: torch.nn.Module) -> list[str]:
    """Names (last component) of every linear layer inside the transformer blocks.

    Works across families without a table: Llama/Qwen2 (q_proj ... down_proj), GPT-2
    (c_attn, c_proj, c_fc; these are ``Conv1D``), GPT-NeoX (query_key_value, dense, ...).
    The output head and embeddings are left out: adapting them is rarely wanted.
    """
    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        linear_types = (torch.nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover - very old transformers
        pass
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: set[str] = set()
    for name, module in model.named_modules():
        if module is output or not isinstance(module, linear_types):
            continue
        if "score" in name.split(".") or "lm_head" in name.split("."):
            continue
        names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise ModelLoadError(
            "found no linear layers to adapt with LoRA; pass --lora-target-modules"
        )
    return sorted(names)


def apply_lora(
    model: torch.nn.Module,
    *,
    rank: int,
    alpha: float = 0.0,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
    adapter_name: str = "default",
):
    """Wrap ``model`` with LoRA adapters of ``rank`` (alpha 0 means 2 x rank).

    A target that names no module of ``model`` (PEFT's own test: the module's name, or its
    end after a dot) is a ConfigError that lists the linear layers there are.
    """
    from peft import LoraConfig, get_peft_model

    targets = target_modules or find_lora_targets(model)
    names = [n for n, _ in model.named_modules()]
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise ConfigError(f"--lora-target-modules: {', '.join(unknown)} names no module of this "
                          "model", field="lora_target_modules", expected=_lora_choices(model))
    # GPT-2 style Conv1D layers store weights transposed; LoRA must know.
    conv1d = any(type(m).__name__ == "Conv1D" and n.rsplit(".", 1)[-1] in targets
                 for n, m in model.named_modules())
    config = LoraConfig(
        fan_in_fan_out=conv1d,
        r=rank,
        lora_alpha=alpha or 2 * rank,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    try:
        return get_peft_model(model, config, adapter_name=adapter_name)
    except ValueError as exc:  # e.g. a target that is not a layer LoRA can adapt
        raise ConfigError(f"--lora-target-modules: LoRA cannot adapt {', '.join(targets)}: "
                          f"{_first_line(exc)}", field="lora_target_modules",
                          expected=_lora_choices(model)) from None


def _lora_choices(model: torch.nn.Module) -> str:
    try:
        return "comma-separated names of its linear layers: " + ", ".join(find_lora_targets(model))
    except ModelLoadError:
        return "comma-separated names of linear layers (this model has none in its blocks)"


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel / FSDP-style wrapper."""
    return getattr(model, "module", model)


def save_model(model: torch.nn.Module, tokenizer, out_dir: str | Path, *, card: str = "",
               state_dict: dict | None = None) -> Path:
    """Write a loadable model directory (safetensors + tokenizer + README.md card).

    For a LoRA model, ``out_dir`` gets the merged full model (so ``from_pretrained`` loads
    it like any other), merged one layer at a time into a CPU copy (``merged_state_dict``: no
    second base model in device memory), and ``out_dir/adapter`` the adapter alone. ``state_dict``:
    the weights to write instead of the model's own (a sharded model's, gathered).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    if is_peft_model(model):
        model.save_pretrained(out / "adapter")
        model.get_base_model().save_pretrained(out, state_dict=merged_state_dict(model))
    elif state_dict is not None:
        model.save_pretrained(out, state_dict=state_dict)
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if card:
        (out / "README.md").write_text(card, encoding="utf-8")
    return out


def merged_state_dict(peft_model, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of ``peft_model`` with its LoRA adapter merged in, on the CPU, under the
    plain model's names: what ``merge_and_unload().state_dict()`` gives, without the copy of
    the whole model that merging needs (on a GPU, a second base model at the end of training).

    Each adapted weight is built on the model's device, base + delta, and moved to the CPU at
    once, so one layer's delta at a time takes device memory; the other tensors are copied
    to the CPU as they are (on a CPU model they are the model's own). The model is left as
    it was. ``adapter_name``: the adapter to merge (None: each layer's active ones); a module
    in ``modules_to_save`` gives that adapter's trained copy. Tied weights stay one tensor.
    """
    from peft.tuners.lora import Embedding, Linear
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

    model = peft_model.get_base_model()  # the model with the LoRA layers in it
    on_cpu: dict[int, torch.Tensor] = {}  # id(tensor on the device) -> its CPU copy
    keep: dict[str, str] = {}  # a wrapping module's "name." -> the part under it to keep
    for name, module in model.named_modules():
        if isinstance(module, (Linear, Embedding)):
            adapters = [adapter_name] if adapter_name else module.active_adapters
            adapters = [a for a in adapters if a not in module.merged_adapters
                        and (a in module.lora_A or a in module.lora_embedding_A)]
            if any(a in module.lora_variant or module.lora_bias[a] for a in adapters):
                raise ValueError(f"{name}: only plain LoRA merges here (no DoRA or lora_bias)")
            weight = module.get_base_layer().weight
            if adapters:  # a tied weight gets the merged tensor under every name
                on_cpu[id(weight)] = _merged_weight(module, weight, adapters)
            keep[name + "."] = "base_layer."
        elif isinstance(module, ModulesToSaveWrapper):
            trained = adapter_name or next(iter(module.active_adapters), None)
            keep[name + "."] = (f"modules_to_save.{trained}." if trained in module.modules_to_save
                                else "original_module.")
        elif isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            raise ValueError(f"{name}: cannot merge a {type(module).__name__} here")
    state = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        owner = next((o for o in keep if key.startswith(o)), None)
        if owner is not None:
            rest = key[len(owner):]
            if not rest.startswith(keep[owner]):
                continue  # lora_A, lora_B, or a copy that another adapter trained
            key = owner + rest[len(keep[owner]):]
        if id(tensor) not in on_cpu:
            on_cpu[id(tensor)] = tensor.detach().to("cpu")
        state[key] = on_cpu[id(tensor)]
    return state


@torch.no_grad()
def _merged_weight(layer, weight: torch.Tensor, adapters: list[str]) -> torch.Tensor:
    """``weight`` + each adapter's delta, rounded to ``weight``'s dtype after each (as PEFT's
    in-place merge does), then on the CPU."""
    merged = weight
    for name in adapters:
        merged = (merged + layer.get_delta_weight(name)).to(weight.dtype)  # fan_in_fan_out done
    return merged.to("cpu")
