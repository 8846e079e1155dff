"""The metric logger: one JSON object per logged step in ``metrics.jsonl``, always.

TensorBoard and Weights & Biases are optional sinks (``--report-to``); each is imported
only when asked for, with a clear error when its package is missing. Only the main
process writes. On resume the file is cut back to the checkpoint's step, so a resumed
run's log reads as if it had never stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from preflab.errors import ConfigError


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the fact visible
    return value


class MetricLogger:
    def __init__(
        self,
        run_dir: str | Path,
        *,
        report_to: str = "",
        enabled: bool = True,
        resume_step: int | None = None,
        config: dict | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        sinks = [s.strip() for s in report_to.split(",") if s.strip()]
        if "tensorboard" in sinks:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "--report-to tensorboard needs the tensorboard package: "
                    "pip install 'preflab[tensorboard]'",
                    field="report_to",
                ) from None
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if "wandb" in sinks:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "--report-to wandb needs the wandb package: pip install 'preflab[wandb]'",
                    field="report_to",
                ) from None
            self._wandb = wandb.init(config=config, dir=str(run_dir), resume="allow")

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        return record

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def format_metrics(record: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A short stdout line of the chosen keys that are present."""
    parts = []
    for key in keys:
        if key in record:
            value = record[key]
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
