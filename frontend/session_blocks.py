"""The last prompt's chained block hashes per conversation, for the sticky fast path.

Why: a fast-path request (``GatewayRouting.decide_sticky``) skips the tokens query, so it has no
block hashes of its own, and the router's KV-full term (``router/cost.py``: a worker whose
distinct blocks in use plus this request's new blocks exceed its capacity pays ``kv_full_ms``)
could not count it: under cache pressure that let the fast path pile conversations onto full
workers (cache-pressure TTFT p99 3.46x of kv in results/routing_experiment_gateway_sticky_all).
A later turn's prompt is the previous prompt plus the answer and a tool result, so its full
blocks start with the previous prompt's full blocks; the rest are new to this conversation.
``extend`` gives such a request the stored hashes plus one synthetic hash per estimated new
block, and stores the result for the next turn.

Bounded: at most ``max_sessions`` conversations (least recently used dropped first), each as a
packed ``array('q')`` (8 bytes per block: 16 MB for 4096 conversations of 32k-token prompts at
64-token blocks). Entries of conversations the router forgot are never read (the fast path
first asks the router's prefix table) and age out of the LRU order.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict

# Marks synthetic blocks apart from the hashes of real token blocks.
_SYNTHETIC = 0x5EC7_10CC


class SessionBlocks:
    """prefix_id -> the chained block hashes of the conversation's last prompt (bounded LRU)."""

    def __init__(self, max_sessions: int = 4096) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.max_sessions = max_sessions
        self._last: OrderedDict[str, array] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def remember(self, prefix_id: str, hashes: list[int]) -> None:
        """The full path saw this conversation's prompt: its real chained hashes."""
        self._put(prefix_id, array("q", hashes))

    def extend(self, prefix_id: str, full_blocks: int) -> list[int] | None:
        """Hashes for a later turn of ``full_blocks`` full blocks (estimated): the stored ones,
        then synthetic ones for the blocks beyond them; None if the conversation is unknown."""
        last = self._last.get(prefix_id)
        if last is None:
            return None
        hashes = last.tolist()
        prev = hashes[-1] if hashes else 0
        for i in range(len(hashes), full_blocks):
            prev = hash((prev, _SYNTHETIC, i))  # chained like processor.routing.chain_hashes
            hashes.append(prev)
        self._put(prefix_id, array("q", hashes))
        return hashes

    def _put(self, prefix_id: str, packed: array) -> None:
        self._last[prefix_id] = packed
        self._last.move_to_end(prefix_id)
        while len(self._last) > self.max_sessions:
            self._last.popitem(last=False)
