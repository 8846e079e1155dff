"""Typed configuration: dataclasses whose fields become CLI flags and YAML keys.

A config class is a plain ``@dataclass``. Each field carries its help text in
``metadata={"help": ...}``, and where it applies what values it takes: ``"choices"`` (one of
a few names), ``"range"`` (a ``Range`` of numbers) or ``"path"`` (a model, data or output
directory). The same declaration gives ``--help``, the YAML schema, the saved ``config.yaml``
and the checks.

Precedence: field default < ``--config FILE.yaml`` < flags given on the command line.
``parse_config`` checks types, then every number against its range (``check_ranges``: floats
must also be finite), then calls the class's ``validate()`` (rules between fields), so a bad
value fails in a second. A command then checks the paths its fields name (``check_paths``)
before it loads anything.

May import: errors, data, models.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from preflab.errors import ConfigError

INT64 = (-(2**63), 2**63 - 1)  # torch, numpy and the tokenizers take no wider integer


@dataclass(frozen=True)
class Range:
    """The numbers a field takes: bounds ``ge`` (>=), ``gt`` (>), ``le`` (<=), ``lt`` (<),
    and ``also``, values allowed outside them (``--max-steps -1``: "count epochs instead").
    A float must be finite unless ``finite=False``; an int must fit in 64 bits."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple[float, ...] = ()
    finite: bool = True

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def __contains__(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.finite and isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        """``at least 1``, ``positive``, ``in [0, 1)``, ``-1, or at least 1``, ..."""
        low, high = _first(self.ge, self.gt), _first(self.le, self.lt)
        if low is not None and high is not None:
            text = (f"in {'[' if self.ge is not None else '('}{_number(low)}, {_number(high)}"
                    f"{']' if self.le is not None else ')'}")
        elif self.ge is not None:
            text = "0 or more" if self.ge == 0 else f"at least {_number(self.ge)}"
        elif self.gt is not None:
            text = "positive" if self.gt == 0 else f"above {_number(self.gt)}"
        elif high is not None:
            text = f"{'at most' if self.le is not None else 'below'} {_number(high)}"
        else:
            text = "any finite number" if self.finite else "any number"
        return ", ".join(map(_number, self.also)) + f", or {text}" if self.also else text


def _first(a: float | None, b: float | None) -> float | None:
    return a if a is not None else b


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def arg(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    also: tuple[float, ...] = (),
    finite: bool | None = None,
    path: Literal["model", "data", "output"] | None = None,
    **kw: Any,
) -> Any:
    """A dataclass field with its help text and what it takes attached: ``choices`` (names),
    a ``Range`` of numbers (``ge``/``gt``/``le``/``lt``/``also``; ``finite=True`` alone says
    "any finite number"), or ``path``, what the string names (checked by ``check_paths``)."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    if any(b is not None for b in bounds.values()) or also or finite is not None:
        metadata["range"] = Range(**bounds, also=tuple(also), finite=finite is not False)
    if path is not None:
        metadata["path"] = path
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def split_arg(flag: str, example: str) -> Any:
    """The split flag of a data source ``flag`` (``--prompts`` -> ``--prompts-split``)."""
    return arg("", f"Split of {flag} to read: of a hub dataset (default train; e.g. {example}), "
               "or of a local directory with named splits (needed when it holds several).")


def config_arg(flag: str) -> Any:
    """The configuration flag of a hub data source ``flag``."""
    return arg("", f"Configuration (subset) of a hub {flag} dataset; empty: its default.")


def fsdp_arg(role: str, note: str = "") -> Any:
    """The ``--fsdp`` flag of the commands that can shard the model they train."""
    return arg(False, f"Shard the {role}'s parameters, gradients and optimizer state over the "
               "processes with FSDP2 (torch.distributed.fsdp.fully_shard), one unit per "
               f"transformer block{note}. Needs torchrun or accelerate launch with 2 or more "
               "processes, and full fine-tuning (docs/scaling.md).")


# Settings of TrainConfig and the trainers' configs that are not hyperparameters of a method
# (data, output, logging, evaluation), left out when compare counts a method's knobs.
NOT_HYPERPARAMETERS = {
    "model", "data", "data_split", "data_config", "output_dir", "eval_data", "eval_data_split",
    "eval_fraction", "seed", "log_every", "eval_every",
    "eval_batch_size", "save_every", "save_total_limit", "resume", "overwrite", "report_to",
    "progress", "allow_pickle", "trust_remote_code", "device", "precision", "attn_implementation",
    "gradient_checkpointing",
    "eval_prompts", "gold_reward", "eval_num_prompts", "eval_max_new_tokens", "eval_temperature",
    "ref_model", "value_model", "reward", "memory_mode", "generation_batch_size", "precompute_ref",
    "max_length", "max_prompt_length", "overlong", "lora_target_modules", "lora_dropout",
    "top_p",  # PPO refuses anything but 1.0 (its training passes score the full softmax)
    # how a run executes, not what it computes: the same losses and weights either way
    "fsdp", "padding_free",
    # what a step with a non-finite loss does (stop, or skip it): a safeguard, not the method
    "nonfinite",
}


@dataclass
class TrainConfig:
    """Flags every training command shares (docs/architecture.md, contract: CLI)."""

    REPLACED = {  # not a field (no annotation)
        "dtype": "--dtype is replaced by --precision on training commands: --dtype float32 is "
                 "--precision fp32, and --dtype bfloat16 (bf16 weights updated in place, no "
                 "float32 master copy) is --precision bf16-true; --precision bf16-mixed keeps "
                 "float32 master weights and computes in bf16 (the default on a GPU), "
                 "fp16-mixed adds loss scaling (docs/precision.md)",
    }
    """Settings that are gone, with what replaces them: named when given as a flag or a key."""

    model: str = arg("", "Model to start from: a local Hugging Face directory, a .gguf file "
                     "(dequantized to the dtype --precision holds it in) or a hub id.",
                     path="model")
    data: str = arg(
        "",
        "Training data: a .jsonl/.json/.parquet/.csv file, a directory of them, or a "
        "`datasets` name.",
        path="data",
    )
    output_dir: str = arg("", "Run directory: config, metrics, checkpoints, final model.",
                          path="output")
    data_split: str = arg(
        "", "Split of --data to read. A hub dataset: default train (e.g. train_prefs). A local "
        "directory with named splits (train_prefs.jsonl, data/train_prefs-00000-of-00001.parquet, "
        "a train_prefs/ folder, a datasets save_to_disk folder): the split to read, needed when "
        "it holds several.")
    data_config: str = arg(
        "", "Configuration (subset) of a hub --data, as datasets.load_dataset(name, config) "
        "takes it; also used for --eval-data when that names the same dataset. Empty: the "
        "dataset's default.")
    eval_data: str = arg(
        "", "Held-out data (same formats). Empty: hold out --eval-fraction of --data.", path="data"
    )
    eval_data_split: str = arg(
        "", "Split of the held-out data: of --eval-data (a hub dataset: default train), or, "
        "without --eval-data, a split of --data held out instead of --eval-fraction (e.g. "
        "test_prefs).")
    eval_fraction: float = arg(0.05, "Fraction of --data held out when neither --eval-data nor "
                               "--eval-data-split is given.", ge=0, lt=1)
    seed: int = arg(0, "Random seed for initialisation, data order and sampling.",
                    ge=0, le=2**32 - 1)  # NumPy's seed range; PPO multiplies it by ~1e6
    max_steps: int = arg(
        -1, "Optimizer steps to run; -1 runs --num-epochs epochs over the training data.",
        ge=1, also=(-1,),
    )
    num_epochs: float = arg(1.0, "Epochs over the training data when --max-steps is -1.", gt=0)
    learning_rate: float = arg(5e-5, "Peak learning rate of AdamW.", gt=0)
    weight_decay: float = arg(0.0, "AdamW weight decay (not applied to biases and norms).", ge=0)
    adam_beta1: float = arg(0.9, "AdamW beta1.", ge=0, lt=1)
    adam_beta2: float = arg(0.999, "AdamW beta2.", ge=0, lt=1)
    lr_scheduler: str = arg(
        "cosine", "Learning-rate schedule after warm-up.", choices=("cosine", "linear", "constant")
    )
    warmup_steps: int = arg(0, "Linear warm-up steps; overrides --warmup-ratio when > 0.", ge=0)
    warmup_ratio: float = arg(0.0, "Warm-up as a fraction of the total steps.", ge=0, lt=1)
    batch_size: int = arg(8, "Examples per micro-batch on each process.", ge=1)
    grad_accum: int = arg(
        1, "Micro-batches accumulated per optimizer step (effective batch = batch x this).", ge=1
    )
    max_grad_norm: float = arg(1.0, "Clip the gradient norm to this; 0 disables clipping.", ge=0)
    max_length: int = arg(512, "Longest sequence (prompt + completion) in tokens.", ge=2)
    max_prompt_length: int = arg(
        0, "Longest prompt in tokens; longer prompts keep their end. 0: no separate limit.", ge=0
    )
    overlong: str = arg(
        "error",
        "What to do with a record whose prompt leaves no room under --max-length.",
        choices=("error", "skip"),
    )
    lora_rank: int = arg(0, "LoRA rank; 0 trains all weights (full fine-tuning).", ge=0)
    lora_alpha: float = arg(0.0, "LoRA alpha; 0 means 2 x --lora-rank.", ge=0)
    lora_dropout: float = arg(0.0, "Dropout on the LoRA path.", ge=0, lt=1)
    lora_target_modules: str = arg(
        "", "Comma-separated module names to adapt; empty finds every linear layer in the blocks."
    )
    precision: str = arg(
        "auto",
        "Numeric precision: fp32; bf16-mixed / fp16-mixed (float32 master weights and AdamW "
        "state, bf16 / fp16 autocast, frozen roles in bf16 / fp16; fp16 adds loss scaling); "
        "bf16-true (everything in bf16, updates below ~1/256 of a weight are lost). auto = "
        "bf16-mixed on a GPU (fp16-mixed without bf16), fp32 elsewhere (docs/precision.md).",
        choices=("auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true"),
    )
    attn_implementation: str = arg(
        "auto", "Attention kernel of every model the run loads, passed to transformers; auto "
        "is transformers' choice (sdpa where the model has it).",
        choices=("auto", "sdpa", "eager", "flash_attention_2"),
    )
    device: str = arg("auto", "Device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
    gradient_checkpointing: bool = arg(False, "Recompute activations in backward to save memory.")
    log_every: int = arg(10, "Log training metrics every N optimizer steps.", ge=1)
    eval_every: int = arg(0, "Evaluate every N steps (0: only at the start and the end).", ge=0)
    eval_batch_size: int = arg(0, "Micro-batch size for evaluation; 0 = --batch-size.", ge=0)
    save_every: int = arg(0, "Write a resumable checkpoint every N steps (0: none before the "
                          "end; SIGTERM or Ctrl-C still writes one where the run stops).", ge=0)
    save_total_limit: int = arg(2, "Keep at most this many step checkpoints (oldest removed).",
                                ge=1)
    resume: bool = arg(False, "Continue from the newest checkpoint in --output-dir.")
    overwrite: bool = arg(False, "Replace an existing run in --output-dir instead of refusing "
                          "(the old run is removed only once the new one has loaded its inputs).")
    nonfinite: str = arg(
        "stop", "A loss or gradient norm that is NaN or infinite: stop the run (exit 1, no "
        "final/), or skip that optimizer step and count it.", choices=("stop", "skip")
    )
    report_to: str = arg(
        "", "Extra metric sinks, comma-separated: tensorboard, wandb (JSONL is always written)."
    )
    progress: bool = arg(True, "Show a progress bar (step, loss, tokens/s).")
    allow_pickle: bool = arg(
        False, "Allow loading pickle-based weight files (.bin/.pt); they can run code."
    )
    trust_remote_code: bool = arg(
        False, "Run model code shipped with a hub model (only for repositories you trust)."
    )

    def validate(self) -> None:
        """Rules between fields; raise ConfigError naming the flag.

        Each number's own range was checked before this (``check_ranges``); the paths are
        checked when a command starts (``check_paths``, from ``session.run_command``)."""
        need = {"model": self.model, "data": self.data, "output_dir": self.output_dir}
        for name, value in need.items():
            if not value:
                raise ConfigError(f"--{flag(name)} is required", field=name)
        if self.max_prompt_length and self.max_prompt_length >= self.max_length:
            raise ConfigError(
                "--max-prompt-length must be below --max-length (or 0)", field="max_prompt_length"
            )
        for sink in filter(None, self.report_to.split(",")):
            if sink.strip() not in ("tensorboard", "wandb"):
                raise ConfigError(
                    f"unknown metric sink {sink!r}",
                    field="report_to",
                    expected="tensorboard, wandb or empty",
                )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other", field="resume")
        self.validate_data_splits()
        if self.attn_implementation == "flash_attention_2" and not _installed("flash_attn"):
            raise ConfigError("--attn-implementation flash_attention_2 needs the flash-attn "
                              "package (pip install flash-attn) and a CUDA GPU; sdpa needs "
                              "neither", field="attn_implementation")


    def validate_data_splits(self) -> None:
        """--data-config only for a hub --data; a held-out split that is not the training one."""
        from preflab.data.readers import SUFFIXES
        from preflab.models import looks_like_local_path

        check_source_config(self, "data", "data_config")
        if not self.eval_data_split:
            return
        local = looks_like_local_path(self.data, suffixes=SUFFIXES)
        trained = self.data_split or ("" if local else "train")
        if self.eval_data_split and not self.eval_data and self.eval_data_split == trained:
            raise ConfigError(f"--eval-data-split {self.eval_data_split} is the split --data "
                              "trains on", field="eval_data_split",
                              expected="another split of --data (e.g. test_prefs), or "
                                       "--eval-fraction to hold out a share of this one")

    def data_source(self) -> dict[str, str | None]:
        """``split`` and ``config`` of --data, as ``preflab.data``'s loaders take them."""
        return {"split": self.data_split or None, "config": self.data_config or None}

    def eval_source(self) -> tuple[str, dict[str, str | None]]:
        """The held-out data and its ``split`` and ``config``: --eval-data (with --data-config
        when it names the same dataset as --data), or --data's --eval-data-split. ``("",
        {})`` when there is neither: a share of --data is held out (--eval-fraction)."""
        if self.eval_data:
            same = self.eval_data == self.data
            return self.eval_data, {"split": self.eval_data_split or None,
                                    "config": (self.data_config or None) if same else None}
        if self.eval_data_split:
            return self.data, {"split": self.eval_data_split, "config": self.data_config or None}
        return "", {}


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def flag(name: str) -> str:
    return name.replace("_", "-")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # Once per class: evaluating every annotation again for each field of each parse was
    # 95% of the time parse_config took (0.1 s for ppo).
    return typing.get_type_hints(cls)


def _field_type(cls: type, f: dataclasses.Field) -> type:
    hint = _type_hints(cls)[f.name]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    if typing.get_origin(hint) is Literal:
        return str
    return hint


def _choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    return f.metadata.get("choices")


# A value such as -1e-3, -.5e2 or -inf is a number, not a flag. argparse's own pattern knows
# only -1 and -0.5 before Python 3.13, so `--learning-rate -1e-3` failed with "expected one
# argument" instead of reaching the range check.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.I)


REPLACED_DEST = "replaced:"


def replaced(cls: type, name: str, where: dict[str, Any] | None = None) -> None:
    """Raise the ConfigError that says what replaced ``name``, if it is a replaced setting."""
    message = getattr(cls, "REPLACED", {}).get(name)
    if message:
        raise ConfigError(message, field=name, **(where or {}))


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field; defaults are shown but SUPPRESSed.

    Prefixes are not flags (``--learning`` is an error, not ``--learning-rate``): a config
    shared today must not change meaning when a flag is added tomorrow."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser._negative_number_matcher = NEGATIVE_NUMBER  # an argparse internal, 3.10 to 3.14
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="Read settings from a YAML file; flags override it."
    )
    for name in getattr(cls, "REPLACED", {}):
        parser.add_argument(f"--{flag(name)}", dest=REPLACED_DEST + name, help=argparse.SUPPRESS)
    for f in fields(cls):
        kind = _field_type(cls, f)
        if kind in (dict, list):
            continue  # structured settings come from the YAML file only
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        allowed = f.metadata.get("range")
        shown = f"default: {default!r}" + (f"; {allowed}" if allowed else "")
        # argparse %-formats help strings: a literal "10%" must reach it as "10%%".
        help_text = f"{f.metadata.get('help', '')} ({shown})".replace("%", "%%")
        name = f"--{flag(f.name)}"
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(
                name,
                type=kind,
                choices=_choices(f),
                metavar=None if _choices(f) else f.name.upper(),
                help=help_text,
            )
    return parser


def _coerce(cls: type, f: dataclasses.Field, value: Any, where: dict[str, Any]) -> Any:
    kind = _field_type(cls, f)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
        if _is_finite(value):  # past 1.8e308 it stays an int, and check_ranges refuses it
            value = float(value)
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads 1e-5 (no dot) as a string: take any number spelled out.
        try:
            value, ok = float(value), True
        except ValueError:
            pass
    if not ok:
        raise ConfigError(
            f"{_shown(value)} is a {type(value).__name__}",
            field=f.name,
            expected="a number" if kind is float else f"a {kind.__name__}",
            **where,
        )
    if isinstance(value, str) and not _encodable(value):  # a YAML escape such as "\ud800"
        raise ConfigError(f"{_shown(value)} holds a lone surrogate, which is not a character",
                          field=f.name, expected="valid Unicode text", **where)
    choices = _choices(f)
    if choices and value not in choices:
        raise ConfigError(
            f"{_shown(value)} is not an allowed value", field=f.name, expected=" | ".join(choices),
            **where,
        )
    return value


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 40, 40, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 4


def _shown(value: Any, limit: int = 80) -> str:
    """``value`` quoted for a message, cut short: a YAML value can be a long string, or a few
    aliases that stand for a billion elements (whose whole repr would never finish)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _encodable(text: str) -> bool:
    """Whether ``text`` can be written out, as the OS writes a name it read (bytes that are not
    UTF-8 come back as the surrogates U+DC80..U+DCFF, and go back out as those bytes)."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _yaml_loader():
    """PyYAML's safe loader, whose value errors carry the line: its constructors let
    ValueError and the like through (``2020-13-45``, ``!!int abc``, ``!!bool maybe``, an
    integer of more than 4,300 digits), where a YAMLError would say where the value is."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                shown = _shown(node.value) if isinstance(node.value, str) else "a value"
                kind = node.tag.rsplit(":", 1)[-1]
                problem = f"cannot read {shown} as a{'n' if kind[:1] in 'aeiou' else ''} {kind}"
                if isinstance(exc, ValueError):  # month must be in 1..12, and the like
                    problem += f" ({str(exc).split(';')[0]})"  # not Python's own advice
                raise yaml.constructor.ConstructorError(None, None, problem,
                                                        node.start_mark) from None

    return Loader


def load_yaml_config(cls: type, path: str) -> dict[str, Any]:
    """Read ``path`` into a {field: value} dict, naming the line of any unknown or bad key."""
    return _read_yaml_config(cls, path)[0]


def _read_yaml_config(cls: type, path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The values, and where each came from: ``{field: {"path": ..., "line": ...}}``."""
    import yaml

    p = Path(path)
    try:
        if not p.is_file():
            raise ConfigError("config file not found", path=path)
        text = p.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.load(text, Loader=_yaml_loader())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        if isinstance(exc, yaml.reader.ReaderError):  # a NUL or other control character
            line = text.count("\n", 0, exc.position) + 1
            exc = f"the character {chr(exc.character)!r}: {exc.reason}"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise ConfigError(f"not valid YAML: {problem}", path=path, line=line) from None
    except OSError as exc:  # a name too long, no permission to read, ...
        raise ConfigError(f"cannot be read: {exc.strerror or type(exc).__name__}",
                          path=path) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError("not valid YAML: collections nested too deeply", path=path) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a mapping of settings", path=path, line=1)
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    origins: dict[str, dict[str, Any]] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        where = {"path": path, "line": lines.get(str(raw_key))}
        if key not in known:
            replaced(cls, key, where)
            raise ConfigError(
                "unknown setting",
                field=str(raw_key),
                expected=f"one of the flags of this command ({', '.join(sorted(known))})",
                **where,
            )
        values[key] = _coerce(cls, known[key], value, where)
        origins[key] = where
    return values, origins


def check_ranges(cfg: Any, origins: dict[str, dict[str, Any]] | None = None) -> None:
    """Check every int and float field of ``cfg`` against its declared ``Range``.

    Where no range is declared, a float must still be finite and an int fit in 64 bits. The
    error names the flag, or the YAML file and line (``origins``) the value came from."""
    origins = origins or {}
    for f in fields(cfg):
        kind = _field_type(type(cfg), f)
        if kind not in (int, float):
            continue
        value, allowed = getattr(cfg, f.name), f.metadata.get("range", Range())
        limits = f" ({allowed})" if allowed.bounded or allowed.also else ""
        if kind is float and allowed.finite and not _is_finite(value):
            must = "a finite number" + limits
        elif value not in allowed:
            must = str(allowed)
        elif kind is int and not INT64[0] <= value <= INT64[1]:
            must = "a 64-bit integer" + limits
        else:
            continue
        where = origins.get(f.name, {})
        name = "" if where else f"--{flag(f.name)} "
        raise ConfigError(f"{name}must be {must}; got {_shown(value)}", field=f.name, **where)


def parse_config(cls: type, argv: list[str] | None, *, prog: str, description: str = ""):
    """Parse ``argv`` into a validated ``cls`` instance (default < YAML < flags)."""
    parser = build_parser(cls, prog, description)
    ns = vars(parser.parse_args(argv))
    for name, value in ns.items():
        if isinstance(value, list):  # `--seed=--`: argparse takes "--" away and passes [] on
            parser.error(f"argument --{flag(name)}: expected one argument")
        if isinstance(value, str) and not _encodable(value):  # from a caller's "\ud800"
            raise ConfigError(f"--{flag(name)} {_shown(value)} holds a lone surrogate, which "
                              "is not a character", field=name, expected="valid Unicode text")
    for name in [n for n in ns if n.startswith(REPLACED_DEST)]:
        replaced(cls, name[len(REPLACED_DEST):])
    values: dict[str, Any] = {}
    origins: dict[str, dict[str, Any]] = {}
    config_path = ns.pop("config", None)
    if config_path:
        values, origins = _read_yaml_config(cls, config_path)
    values.update(ns)
    for name in ns:
        origins.pop(name, None)  # a flag overrides the file: the error names the flag
    cfg = cls(**values)
    check_ranges(cfg, origins)
    _validate(cfg)
    return cfg


def _validate(cfg: Any) -> None:
    """``cfg.validate()``; a path one of its rules looks at (``--reward`` names a directory
    or a file) that the OS refuses to look up, a name too long, is the user's error too."""
    try:
        cfg.validate()
    except OSError as exc:
        raise ConfigError(f"cannot look up {_shown(exc.filename or '')}: "
                          f"{exc.strerror or type(exc).__name__}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type, values: dict[str, Any]):
    """Build and validate ``cls`` from Python values (for library callers and the demo)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    for name in unknown:
        replaced(cls, name)
    if unknown:
        raise ConfigError(f"unknown settings {unknown}", expected=f"fields of {cls.__name__}")
    cfg = cls(**{k: _coerce(cls, known[k], v, {}) for k, v in values.items()})
    check_ranges(cfg)
    _validate(cfg)
    return cfg


# --- Paths: what each `path=` field names must be usable, checked before anything loads ------

# Filesystems of the kernel's own: a root process may pass os.access there, yet not mkdir.
KERNEL_FILESYSTEMS = ("proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs",
                      "tracefs", "securityfs", "configfs", "pstore", "bpf", "mqueue")
def check_data_path(value: str, name: str) -> None:
    """Data meant as a local file or directory must exist (a hub name is the data layer's)."""
    from preflab.data.readers import SUFFIXES
    from preflab.models import looks_like_local_path

    if looks_like_local_path(value, suffixes=SUFFIXES) and not Path(value).expanduser().exists():
        raise ConfigError(f"--{flag(name)}: no such file or directory", path=value, field=name,
                          expected="a data file, a directory of them, or a `datasets` name "
                                   "such as org/name")


def check_source_config(cfg: Any, source: str, config: str) -> None:
    """A configuration flag (``config``) names a configuration of a hub dataset: refused when
    the data flag it belongs to (``source``) is a local path."""
    from preflab.data.readers import SUFFIXES
    from preflab.models import looks_like_local_path

    if getattr(cfg, config) and looks_like_local_path(getattr(cfg, source), suffixes=SUFFIXES):
        raise ConfigError(f"--{flag(config)} names a configuration of a hub dataset, and "
                          f"--{flag(source)} is a local path", field=config,
                          expected=f"no --{flag(config)}, or --{flag(source)} pointing at the "
                                   "configuration's own folder")


def check_output_dir(value: str, name: str) -> None:
    """The nearest existing ancestor of ``value`` must be a directory this process can write
    in; nothing is created here."""
    target = Path(os.path.abspath(value))
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--{flag(name)}: {existing} is a file, so no directory can be made "
                          "there", path=value, field=name)
    kind = _filesystem_type(Path(os.path.realpath(existing)))
    if not os.access(existing, os.W_OK | os.X_OK) or kind in KERNEL_FILESYSTEMS:
        raise ConfigError(f"--{flag(name)}: cannot write in {existing}"
                          + (f" (a {kind} filesystem)" if kind in KERNEL_FILESYSTEMS else ""),
                          path=value, field=name, expected="a directory you can write to")



def check_new_file(path: str, name: str, overwrite: bool, *,
                   suffixes: tuple[str, ...] | None = None, what: str | None = None) -> None:
    """An output file: the right kind of name, a writable place, and new (or --overwrite).
    ``what`` names the file in messages (default: its flag, from ``name``)."""
    flag = what or "--" + name.replace("_", "-")
    target = Path(path).expanduser()
    if suffixes and target.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} must name a {' or '.join(suffixes)} file", path=path,
                          field=name)
    if target.is_dir():
        raise ConfigError(f"{flag} is a directory", path=path, field=name,
                          expected="a file name")
    if target.exists() and not overwrite:
        raise ConfigError(f"{flag} exists", path=path, field=name,
                          expected="a new file name, or --overwrite to replace it")
    check_output_dir(str(target.parent), name)

def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem that holds ``path`` (from /proc/self/mounts; None elsewhere)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = -1, None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ").rstrip("/")
        if (str(path) == mount or str(path).startswith(mount + "/")) and len(mount) > best:
            best, kind = len(mount), parts[2]
    return kind


def check_paths(cfg: Any, *, network: bool = True) -> None:
    """Every non-empty field declared with ``path=``: data and output directories first, then
    models (which may ask the hub, ``models.check_model_source``; with ``network=False`` only
    a local model path is checked, and a hub id is left to the loader)."""
    declared = [(f.name, f.metadata["path"], getattr(cfg, f.name)) for f in fields(cfg)
                if f.metadata.get("path") and getattr(cfg, f.name)]
    for name, what, value in declared:
        if what == "data":
            check_data_path(value, name)
        elif what == "output":
            check_output_dir(value, name)
    for name, what, value in declared:
        if what == "model":
            from preflab.models import check_model_source

            check_model_source(value, flag=f"--{flag(name)}", network=network)
