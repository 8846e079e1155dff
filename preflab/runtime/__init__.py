"""What every algorithm needs and no algorithm owns.

``rundir`` (the run directory contract), ``checkpoint`` (atomic save, exact resume),
``metrics`` (JSONL/stdout/TensorBoard/W&B logger), ``memory`` (peak RSS, CUDA, tensor bytes
by role), ``optim`` (AdamW + schedules), ``stream`` (deterministic, resumable batch order),
``rng`` (seeding and RNG state), ``distributed`` (torchrun / accelerate process groups),
``precision`` (the modes' dtypes and autocast), ``signals`` (stopping at a step boundary),
``progress`` (the bars), ``exits`` (how a process ends when its stdout's reader has gone). A
run's start and end, which need models and data, are ``preflab.training.session``.

May import: errors, models.
"""
