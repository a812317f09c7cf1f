"""How fast each worker's KV cache turns over, and so how likely a conversation's blocks are
still there when it comes back.

An engine evicts least recently used blocks: a conversation's blocks, idle after its turn,
survive until the worker has written about a KV's worth (its capacity) of new blocks. At the
worker's current write rate r that takes ``capacity / r`` seconds. A conversation expected
back after a gap of mean g (its ``iat``), taken as exponential, returns before that with
chance ``1 - exp(-capacity / (r g))``: its claim on the home is worth that share of its blocks.

The write rate is the new (uncached) blocks the router sent each worker, as a count that
decays with time constant ``WINDOW_S``; state is one pair of floats per worker.
"""

from __future__ import annotations

import math

WINDOW_S = 10.0  # time constant of the write rate


class Turnover:
    """New blocks written per second on each worker (decaying), from the router's placements."""

    __slots__ = ("_at", "_count")

    def __init__(self) -> None:
        self._count: dict[int, float] = {}  # decayed blocks written, per worker
        self._at: dict[int, float] = {}  # when that count was last brought up to date

    def add(self, worker: int, blocks: float, now: float) -> None:
        """``blocks`` new blocks were sent to ``worker`` at ``now``."""
        self._count[worker] = self._decayed(worker, now) + blocks
        self._at[worker] = now

    def rate(self, worker: int, now: float) -> float:
        """Blocks per second written to ``worker`` lately."""
        return self._decayed(worker, now) / WINDOW_S

    def return_chance(self, worker: int, capacity_blocks: float, gap_s: float, now: float) -> float:
        """Chance that blocks left idle on ``worker`` now are still cached after a gap of
        mean ``gap_s`` (exponential): 1 where the worker writes nothing new."""
        written = self.rate(worker, now) * gap_s  # new blocks expected during the gap
        if written <= 0.0:
            return 1.0
        return -math.expm1(-capacity_blocks / written)

    def forget(self, worker: int) -> None:
        self._count.pop(worker, None)
        self._at.pop(worker, None)

    def _decayed(self, worker: int, now: float) -> float:
        count = self._count.get(worker)
        if count is None:
            return 0.0
        return count * math.exp(-max(0.0, now - self._at[worker]) / WINDOW_S)
