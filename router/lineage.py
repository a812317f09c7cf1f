"""Conversations of un-hinted traffic, inferred from prefix lineage.

A request without a ``prefix_id`` continues an earlier conversation when its prompt contains
that conversation's latest prompt: every block of it except the last ``slack_tokens`` (a turn
may re-render its tail: a partial last block, a trailing generation prompt). Sharing a
prefix, however long, is not enough. A system prompt that many conversations start with is a
prefix of each of their prompts and the whole of none, so it never merges them. The match must
also reach past the first ``slack_tokens``: a prompt that is a short shared prefix and a few
blocks of its own does not adopt newcomers that share only the prefix. What remains: a prompt
that is a long shared prefix plus less than ``slack_tokens`` of its own can be continued by
one newcomer that shares only the prefix. That costs little: affinity counts only the blocks
the home holds exclusively (router/cost.py), and the tail moves on to the newcomer's.
Identical prompts (a retry, or the same opening question) continue one conversation, which
is where their cache is. A block held by the tails of two conversations is ambiguous and
matches neither.

State per conversation: its key, its turn count and the hashes of its latest prompt's last
``slack_tokens`` (a strided handful, never more than ``MAX_TAIL_HASHES``); no token lists, no
earlier tails. The table is an LRU capped at ``max_conversations`` whose entries also expire
after ``idle_ttl_s`` without a request, on the caller's clock. ``find`` is O(prompt
blocks): a reverse scan of the chained block hashes for the deepest known tail block.
Memory (tracemalloc, 64-token blocks: 5 tail hashes each): ~780 bytes per conversation,
~16 MB at the 20,000 cap. ``find`` only reads (a request held back by admission may be
decided again); ``record`` writes once the request is placed, and learns the typical gap
between turns (``gap_s``), which the router uses as the inferred conversation's return time.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

MAX_TAIL_HASHES = 8  # tail blocks indexed per conversation (strided beyond this)
GAP_EWMA = 0.05  # weight of one continuation's gap in the learned typical gap
EXPIRE_BATCH = 8  # idle conversations dropped per record, at most


class _Conversation:
    __slots__ = ("key", "last_seen", "tail", "turns")

    def __init__(self, key: str, now: float) -> None:
        self.key = key
        self.turns = 0
        self.tail: tuple[int, ...] = ()  # indexed hashes of its last blocks
        self.last_seen = now


class Lineage:
    """Bounded map from the tail blocks of recent prompts to their conversations."""

    def __init__(
        self,
        block_size: int,
        max_conversations: int = 20_000,
        idle_ttl_s: float = 600.0,
        slack_tokens: int = 512,
    ) -> None:
        self.max_conversations = max_conversations
        self.idle_ttl_s = idle_ttl_s
        self.slack_blocks = max(1, -(-slack_tokens // block_size))
        window = self.slack_blocks + 1  # positions len-1-slack .. len-1
        self.stride = max(1, -(-window // MAX_TAIL_HASHES))
        self._convs: OrderedDict[str, _Conversation] = OrderedDict()
        # Tail block hash -> its conversation, or the number of tails holding it (ambiguous).
        self._owner: dict[int, _Conversation | int] = {}
        self._ids = itertools.count()
        self.continued = 0  # requests that continued a conversation
        self.started = 0  # requests that started one
        self.evictions = 0  # conversations dropped because the table was full
        self.gap_s: float | None = None  # typical gap between turns (EWMA), None until seen

    def __len__(self) -> int:
        return len(self._convs)

    def indexed_blocks(self) -> int:
        """Tail hashes held (bounded by max_conversations x MAX_TAIL_HASHES)."""
        return len(self._owner)

    def find(self, chain: Sequence[int], now: float) -> str | None:
        """The key of the conversation whose latest prompt this prompt (its chained block
        hashes) extends, by the module's rules; None: a new conversation."""
        conv = self._match(chain, now)
        return None if conv is None else conv.key

    def record(self, chain: Sequence[int], key: str | None, now: float) -> tuple[str, int]:
        """Record the prompt as the latest of conversation ``key`` (from ``find``; None or
        gone: a new one). Returns the conversation's key and turn number (1 = first seen)."""
        self._expire(now)
        conv = self._convs.get(key) if key is not None else None
        if conv is None:
            conv = _Conversation(f"~{next(self._ids):x}", now)
            self._convs[conv.key] = conv
            self.started += 1
            if len(self._convs) > self.max_conversations:
                _, oldest = self._convs.popitem(last=False)
                self._unindex(oldest)
                self.evictions += 1
        else:
            self._convs.move_to_end(conv.key)
            self.continued += 1
            gap = max(0.0, now - conv.last_seen)
            self.gap_s = gap if self.gap_s is None else self.gap_s + GAP_EWMA * (gap - self.gap_s)
        self._unindex(conv)
        n = len(chain)
        conv.turns += 1
        conv.last_seen = now
        lo = max(0, n - 1 - self.slack_blocks)
        conv.tail = tuple(chain[p] for p in range(n - 1, lo - 1, -self.stride))
        owner = self._owner
        for h in conv.tail:
            o = owner.get(h)
            if o is None:
                owner[h] = conv
            elif o is not conv:
                owner[h] = (o if isinstance(o, int) else 1) + 1
        return conv.key, conv.turns

    def _match(self, chain: Sequence[int], now: float) -> _Conversation | None:
        """The conversation whose latest prompt this one extends, by the module's rules."""
        owner = self._owner
        for p in range(len(chain) - 1, -1, -1):
            o = owner.get(chain[p])
            if o is None:
                continue
            if isinstance(o, int):  # held by several tails: ambiguous
                return None
            if p < self.slack_blocks:  # (every indexed block is within the slack of its end)
                return None
            if now - o.last_seen > self.idle_ttl_s:
                return None
            return o
        return None

    def _unindex(self, conv: _Conversation) -> None:
        owner = self._owner
        for h in conv.tail:
            o = owner.get(h)
            if o is conv:
                del owner[h]
            elif isinstance(o, int):
                if o <= 1:
                    del owner[h]
                else:
                    owner[h] = o - 1
        conv.tail = ()

    def _expire(self, now: float) -> None:
        convs = self._convs
        horizon = now - self.idle_ttl_s
        for _ in range(EXPIRE_BATCH):
            if not convs:
                return
            key, oldest = next(iter(convs.items()))
            if oldest.last_seen > horizon:
                return
            del convs[key]
            self._unindex(oldest)
