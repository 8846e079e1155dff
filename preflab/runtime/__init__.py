"""What every algorithm needs and no algorithm owns.

``rundir`` (the run directory contract), ``checkpoint`` (atomic save, exact resume),
``metrics`` (JSONL/stdout/TensorBoard/W&B logger), ``memory`` (peak RSS, CUDA, tensor bytes
by role), ``optim`` (AdamW + schedules), ``stream`` (deterministic, resumable batch order),
``rng`` (seeding and RNG state), ``distributed`` (torchrun / accelerate process groups).

May import: errors, models.
"""
