"""The numeric precision of a training run (``--precision``; docs/precision.md).

Which dtype each kind of tensor is held in, and what the matrix products compute in:

    mode        trained weights, gradients, AdamW state   compute           frozen roles
    fp32        float32                                   float32           float32
    bf16-mixed  float32 (the master weights)              bfloat16 autocast bfloat16
    fp16-mixed  float32 (the master weights)              float16 autocast  float16
    bf16-true   bfloat16                                  bfloat16          bfloat16

The names are Lightning's. ``auto`` is ``bf16-mixed`` on a GPU that supports bfloat16,
``fp16-mixed`` on one that does not, and ``fp32`` elsewhere. Frozen roles (a reward model, a
judge, a LoRA model's base) never update, so holding them in the compute dtype loses nothing
the autocast would not round away anyway. The reference is held as the policy's weights are
(``policy_dtype``): at step 0 the two must compute the same, and a float32 policy under
autocast keeps its residual stream and norms in float32 where a bf16 copy would not.

Under the mixed modes a trained weight that lies exactly halfway between two values of the
compute dtype (as 8% of a Q4_1 GGUF model's dequantized weights do) starts at the value the
forward rounds it to (``prepare_trained``). Left on the tie, the first update of any size in
one direction would tip its rounding and move it, as the forward sees it, by a whole step of
the compute dtype: a coherent jump hundreds of times the learning rate. ``fp16-mixed`` scales the
loss (a ``torch.amp.GradScaler``): a step whose scaled gradients overflow is skipped and
counted, and the scale halves, then grows back after ``GROWTH_INTERVAL`` good steps.

``bf16-true`` updates bfloat16 weights in place. bfloat16 keeps 8 significant bits, so an
update smaller than half the spacing between a weight and its neighbours (1/512 to 1/256 of
the weight) rounds away; ``unmoved_fraction`` says how many weights an update of the
learning rate's size leaves where they are, and the trainers warn when that is most.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

CHUNK = 1 << 22  # elements per pass over a weight: bounded working memory
GROWTH_INTERVAL = 2000  # good steps before the loss scale doubles (torch's and Lightning's)
UNMOVED_WARNING = 0.5  # warn when an update of size lr leaves more than this share unmoved


@dataclass(frozen=True)
class Precision:
    name: str
    trained: torch.dtype
    """Trained weights, their gradients and AdamW's moments."""
    compute: torch.dtype
    """What matrix products run in: autocast's dtype when it differs from ``trained``."""
    frozen: torch.dtype
    """Roles that never update: reference, reward and judge models, a LoRA model's base."""

    @property
    def mixed(self) -> bool:
        return self.compute != self.trained

    @property
    def scaled(self) -> bool:
        return self.compute == torch.float16 and self.mixed

    def autocast(self, device_type: str):
        """Autocast to the compute dtype for a mixed mode; a no-op context otherwise.

        Without autocast's weight cache: it keeps each weight's cast until the outermost
        autocast context exits, and a trainer's context spans every step, so the next forward
        would compute with the weights from before the optimizer updated them in place."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.compute, cache_enabled=False)

    def scaler(self, device_type: str) -> torch.amp.GradScaler | None:
        """The dynamic loss scaler of ``fp16-mixed``; None for the others."""
        if not self.scaled:
            return None
        return torch.amp.GradScaler(device_type, growth_interval=GROWTH_INTERVAL)

    def policy_dtype(self, lora: bool) -> torch.dtype:
        """The dtype the policy's weights load in (a LoRA model's base is frozen), and so the
        reference's."""
        return self.frozen if lora else self.trained


MODES = {
    "fp32": Precision("fp32", torch.float32, torch.float32, torch.float32),
    "bf16-mixed": Precision("bf16-mixed", torch.float32, torch.bfloat16, torch.bfloat16),
    "fp16-mixed": Precision("fp16-mixed", torch.float32, torch.float16, torch.float16),
    "bf16-true": Precision("bf16-true", torch.bfloat16, torch.bfloat16, torch.bfloat16),
}


def resolve(name: str, device: torch.device) -> Precision:
    """``--precision`` on ``device``: ``auto`` is bf16-mixed on a GPU with bfloat16,
    fp16-mixed on an older GPU, fp32 on a CPU or Apple's GPU."""
    if name == "auto":
        if device.type != "cuda":
            name = "fp32"
        else:
            name = "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    return MODES[name]


@contextlib.contextmanager
def scope(name: str, device: str):
    """Run a trainer's forward passes under the precision's autocast (``session.trainer``);
    ``session.backward`` steps out of it for the backward pass, as torch advises."""
    from preflab.models import resolve_device

    where = resolve_device(device)
    with resolve(name, where).autocast(where.type):
        yield


def prepare_trained(model: torch.nn.Module, precision: Precision) -> tuple[int, int]:
    """Mixed modes: hold every parameter that trains in float32 (the master weights), whatever
    the frozen rest is in (LoRA adapters, a trained copy of a head), and move each weight that
    lies on a tie of the compute dtype to the value the forward rounds it to
    (``snap_ties``). Other modes keep what they loaded (bf16-true: PEFT's float32 adapters
    beside a bfloat16 head copy). Returns (weights moved off a tie, trained weights)."""
    if not precision.mixed:
        return 0, 0
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        if p.dtype != precision.trained:
            p.data = p.data.to(precision.trained)
    return snap_ties_of(trained, precision), sum(p.numel() for p in trained)


def snap_ties_of(params, precision: Precision) -> int:
    """Mixed modes: ``snap_ties`` on each of ``params`` held in the trained dtype (a LoRA
    base in the compute dtype has no ties); the number moved."""
    if not precision.mixed:
        return 0
    return sum(snap_ties(p.data, precision.compute) for p in params
               if p.dtype == precision.trained)


@torch.no_grad()
def snap_ties(weights: torch.Tensor, compute: torch.dtype) -> int:
    """Set each element of ``weights`` that lies exactly halfway between two ``compute`` values
    to the one a cast rounds it to (half to even); return how many there were. ``r`` is the
    cast's value; a tie's mirror image ``2w - r`` is the other neighbour, equally far."""
    moved = 0
    for chunk in weights.view(-1).split(CHUNK):
        r = chunk.to(compute).to(chunk.dtype)
        other = (2 * chunk - r).to(compute).to(chunk.dtype)
        tie = (other != r) & ((chunk - other).abs() == (chunk - r).abs())
        n = int(tie.sum())
        if n:
            chunk.copy_(torch.where(tie, r, chunk))
            moved += n
    return moved


def unmoved_fraction(params, step: float, dtype: torch.dtype = torch.bfloat16) -> float:
    """The share of the weights in ``params`` that adding ``step`` leaves unchanged in
    ``dtype``: those more than about 256 (bfloat16) times ``step`` in size. An AdamW update
    is at most about the learning rate per weight, so at ``step = lr`` this is the least
    share of the weights that a step cannot move."""
    unmoved = total = 0
    for p in params:
        for chunk in p.detach().reshape(-1).split(CHUNK):
            w = chunk.to(dtype)
            unmoved += int(((w.float() + step).to(dtype) == w).sum())
            total += w.numel()
    return unmoved / max(total, 1)
