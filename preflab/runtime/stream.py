"""A deterministic, resumable order of training examples.

Examples are drawn from an endless stream: epoch ``e`` is a permutation of the dataset
seeded by ``(seed, e)``. A micro-batch is the next ``batch_size`` examples of the stream,
whatever the micro-batch size, so 8 micro-batches of 1 see exactly the examples that one
micro-batch of 8 sees (the gradient-accumulation invariant). The position is a single
integer (examples consumed), saved in checkpoints to resume exactly.

With several processes, each takes every ``world_size``-th example of the same stream
(offset by its rank), so the global batch is the same as on one process.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class ExampleStream(Generic[T]):
    def __init__(
        self, examples: Sequence[T], *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if not examples:
            raise ValueError("ExampleStream needs at least one example")
        self.examples = examples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = 0  # examples of the global stream consumed so far
        self._epoch = -1
        self._order: list[int] = []

    @property
    def epoch(self) -> float:
        return self.position / len(self.examples)

    def _index(self, global_position: int) -> int:
        epoch, offset = divmod(global_position, len(self.examples))
        if epoch != self._epoch:
            self._order = list(range(len(self.examples)))
            random.Random(f"{self.seed}-{epoch}").shuffle(self._order)
            self._epoch = epoch
        return self._order[offset]

    def next_batch(self, batch_size: int) -> list[T]:
        """The next ``batch_size`` examples for this process."""
        batch = []
        for _ in range(batch_size):
            global_position = self.position + self.rank
            batch.append(self.examples[self._index(global_position)])
            self.position += self.world_size
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])
