"""Typed configuration: dataclasses whose fields become CLI flags and YAML keys.

A config class is a plain ``@dataclass``. Each field carries its help text in
``metadata={"help": ...}`` (and ``"choices"`` where the value is one of a few names), so the
same declaration gives ``--help``, the YAML schema and the saved ``config.yaml``.

Precedence: field default < ``--config FILE.yaml`` < flags given on the command line.
``parse_config`` validates types and then calls the class's ``validate()`` before any
model is loaded, so a bad combination fails in a second, not after a download.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from preflab.errors import ConfigError


def arg(default: Any, help: str, *, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    """A dataclass field with its help text (and allowed values) attached."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@dataclass
class TrainConfig:
    """Flags every training command shares (DESIGN.md, contract: CLI)."""

    model: str = arg("", "Model to start from: a local Hugging Face directory or a hub id.")
    data: str = arg(
        "",
        "Training data: a .jsonl/.json/.parquet/.csv file, a directory of them, or a "
        "`datasets` name.",
    )
    output_dir: str = arg("", "Run directory: config, metrics, checkpoints, final model.")
    eval_data: str = arg(
        "", "Held-out data (same formats). Empty: hold out --eval-fraction of --data."
    )
    eval_fraction: float = arg(0.05, "Fraction of --data held out when --eval-data is empty.")
    seed: int = arg(0, "Random seed for initialisation, data order and sampling.")
    max_steps: int = arg(
        -1, "Optimizer steps to run; -1 runs --num-epochs epochs over the training data."
    )
    num_epochs: float = arg(1.0, "Epochs over the training data when --max-steps is -1.")
    learning_rate: float = arg(5e-5, "Peak learning rate of AdamW.")
    weight_decay: float = arg(0.0, "AdamW weight decay (not applied to biases and norms).")
    adam_beta1: float = arg(0.9, "AdamW beta1.")
    adam_beta2: float = arg(0.999, "AdamW beta2.")
    lr_scheduler: str = arg(
        "cosine", "Learning-rate schedule after warm-up.", choices=("cosine", "linear", "constant")
    )
    warmup_steps: int = arg(0, "Linear warm-up steps; overrides --warmup-ratio when > 0.")
    warmup_ratio: float = arg(0.0, "Warm-up as a fraction of the total steps.")
    batch_size: int = arg(8, "Examples per micro-batch on each process.")
    grad_accum: int = arg(
        1, "Micro-batches accumulated per optimizer step (effective batch = batch x this)."
    )
    max_grad_norm: float = arg(1.0, "Clip the gradient norm to this; 0 disables clipping.")
    max_length: int = arg(512, "Longest sequence (prompt + completion) in tokens.")
    max_prompt_length: int = arg(
        0, "Longest prompt in tokens; longer prompts keep their end. 0: no separate limit."
    )
    overlong: str = arg(
        "error",
        "What to do with a record whose prompt leaves no room under --max-length.",
        choices=("error", "skip"),
    )
    lora_rank: int = arg(0, "LoRA rank; 0 trains all weights (full fine-tuning).")
    lora_alpha: float = arg(0.0, "LoRA alpha; 0 means 2 x --lora-rank.")
    lora_dropout: float = arg(0.0, "Dropout on the LoRA path.")
    lora_target_modules: str = arg(
        "", "Comma-separated module names to adapt; empty finds every linear layer in the blocks."
    )
    dtype: str = arg(
        "auto",
        "Weights dtype; auto = bfloat16 on GPUs that support it, else float32.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    device: str = arg("auto", "Device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
    gradient_checkpointing: bool = arg(False, "Recompute activations in backward to save memory.")
    log_every: int = arg(10, "Log training metrics every N optimizer steps.")
    eval_every: int = arg(0, "Evaluate every N steps (0: only at the start and the end).")
    eval_batch_size: int = arg(0, "Micro-batch size for evaluation; 0 = --batch-size.")
    save_every: int = arg(0, "Write a resumable checkpoint every N steps (0: only at the end).")
    save_total_limit: int = arg(2, "Keep at most this many step checkpoints (oldest removed).")
    resume: bool = arg(False, "Continue from the newest checkpoint in --output-dir.")
    overwrite: bool = arg(False, "Replace an existing run in --output-dir instead of refusing.")
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
        """Check values and combinations; raise ConfigError naming the flag."""
        need = {"model": self.model, "data": self.data, "output_dir": self.output_dir}
        for name, value in need.items():
            if not value:
                raise ConfigError(f"--{flag(name)} is required", field=name)
        positive = ("batch_size", "grad_accum", "max_length", "log_every", "save_total_limit")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{flag(name)} must be at least 1", field=name)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("--max-steps must be a positive number, or -1", field="max_steps")
        if self.learning_rate <= 0:
            raise ConfigError("--learning-rate must be positive", field="learning_rate")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("--eval-fraction must be in [0, 1)", field="eval_fraction")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("--warmup-ratio must be in [0, 1)", field="warmup_ratio")
        if self.lora_rank < 0:
            raise ConfigError("--lora-rank must be 0 (full fine-tuning) or more", field="lora_rank")
        if self.max_prompt_length and self.max_prompt_length >= self.max_length:
            raise ConfigError(
                "--max-prompt-length must be below --max-length (or 0)", field="max_prompt_length"
            )
        for name in ("eval_every", "save_every", "eval_batch_size", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{flag(name)} must be 0 or more", field=name)
        for sink in filter(None, self.report_to.split(",")):
            if sink.strip() not in ("tensorboard", "wandb"):
                raise ConfigError(
                    f"unknown metric sink {sink!r}",
                    field="report_to",
                    expected="tensorboard, wandb or empty",
                )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other", field="resume")


def flag(name: str) -> str:
    return name.replace("_", "-")


def _field_type(cls: type, f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(cls)[f.name]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    if typing.get_origin(hint) is Literal:
        return str
    return hint


def _choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    return f.metadata.get("choices")


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field; defaults are shown but SUPPRESSed."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="Read settings from a YAML file; flags override it."
    )
    for f in fields(cls):
        kind = _field_type(cls, f)
        if kind in (dict, list):
            continue  # structured settings come from the YAML file only
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
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
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"{value!r} is a {type(value).__name__}",
            field=f.name,
            expected=f"a {kind.__name__}",
            **where,
        )
    choices = _choices(f)
    if choices and value not in choices:
        raise ConfigError(
            f"{value!r} is not an allowed value", field=f.name, expected=" | ".join(choices), **where
        )
    return value


def load_yaml_config(cls: type, path: str) -> dict[str, Any]:
    """Read ``path`` into a {field: value} dict, naming the line of any unknown or bad key."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError("config file not found", path=path)
    try:
        text = p.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
            path=path,
            line=mark.line + 1 if mark else None,
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a mapping of settings", path=path, line=1)
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        where = {"path": path, "line": lines.get(str(raw_key))}
        if key not in known:
            raise ConfigError(
                "unknown setting",
                field=str(raw_key),
                expected=f"one of the flags of this command ({', '.join(sorted(known))})",
                **where,
            )
        values[key] = _coerce(cls, known[key], value, where)
    return values


def parse_config(cls: type, argv: list[str] | None, *, prog: str, description: str = ""):
    """Parse ``argv`` into a validated ``cls`` instance (default < YAML < flags)."""
    parser = build_parser(cls, prog, description)
    ns = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_path = ns.pop("config", None)
    if config_path:
        values.update(load_yaml_config(cls, config_path))
    values.update(ns)
    cfg = cls(**values)
    cfg.validate()
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type, values: dict[str, Any]):
    """Build and validate ``cls`` from Python values (for library callers and the demo)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown settings {unknown}", expected=f"fields of {cls.__name__}")
    cfg = cls(**{k: _coerce(cls, known[k], v, {}) for k, v in values.items()})
    cfg.validate()
    return cfg
