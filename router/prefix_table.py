"""Bounded table of live prefixes (conversations): where they live, how many requests are
still to come, and which capacity they pin.

A prefix (``prefix_id`` from the client's agent hints) is *live* while the router still
expects it to come back: its reuse budget (``total_requests`` minus the requests already
seen) is positive, or its pin has not expired. Once neither holds, or it has been idle for
``idle_ttl_s`` without a pin, it is forgotten. The prior art kept per-prefix state forever;
here the table is an LRU (``OrderedDict``) capped at ``max_entries``: inserting past the cap
evicts the least recently seen prefix and counts it.

Expiry costs nothing on the request path beyond a check of the entry being read (lazy). The
background ``sweep(now)`` does the rest in bounded steps (at most ``batch`` entries per
call): it pops due pin timers from a heap (one timer per pinned entry, re-armed lazily when
the pin was extended) and inspects the oldest entries of the LRU for idleness.

Per-worker reserved (claimed) block totals are maintained in O(1) per change, so the cost
model reads "blocks claimed on worker w" without touching the entries. An entry reserves
``blocks`` on its home worker exactly while it holds: its pin is active, or its soft claim
(the conversation is expected back, from its iat hint) has not run out. A client that said how
many requests come releases everything with the last one. Because expiry is detected
lazily/by the sweep, the totals can lag real expiry by one sweep interval.

Memory: measured with tracemalloc (tests/unit/test_router_prefix_table.py) at about 300
bytes per tracked prefix: ~210 B for the entry object and the OrderedDict slot plus ~85 B
for a 36-character ``prefix_id`` string; 100k prefixes (the default cap) ~ 30 MB. A pinned
entry adds one timer tuple in the heap (~120 B).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict


class PrefixEntry:
    """One live prefix. ``__slots__`` keeps it ~100 bytes (no per-instance dict)."""

    __slots__ = (
        "blocks",
        "claim_until",
        "finite",
        "home",
        "key",
        "last_seen",
        "pin_expiry",
        "remaining",
        "reserved",
        "timer_armed",
    )

    def __init__(self, key: str, home: int, remaining: int, now: float, blocks: int) -> None:
        self.key = key  # needed when a pin timer pops and must find its table slot
        self.home = home  # worker id holding the conversation's KV cache
        self.remaining = remaining  # requests still expected (reuse budget)
        self.pin_expiry = 0.0  # monotonic seconds; <= now means not pinned
        self.last_seen = now
        self.blocks = blocks  # KV blocks of the last prompt (history overlap, reservation)
        self.reserved = 0  # blocks currently counted in the home worker's reserved total
        self.timer_armed = False  # one hold timer in the heap at most
        self.claim_until = 0.0  # soft claim: expected back before this (monotonic seconds)
        self.finite = False  # the client said how many requests come (total_requests > 1)

    def pinned(self, now: float) -> bool:
        return self.pin_expiry > now

    def holds(self, now: float) -> bool:
        """Whether the home's blocks are claimed: a pin, or a return expected soon."""
        return self.pin_expiry > now or self.claim_until > now

    def hold_until(self) -> float:
        return max(self.pin_expiry, self.claim_until)

    def __repr__(self) -> str:  # for test failures and debugging only
        return (
            f"PrefixEntry({self.key!r}, home={self.home}, remaining={self.remaining}, "
            f"pin_expiry={self.pin_expiry:.3f}, blocks={self.blocks}, reserved={self.reserved})"
        )


class PrefixTable:
    """LRU-bounded map ``prefix_id -> PrefixEntry`` with lazy + swept expiry."""

    def __init__(
        self,
        max_entries: int = 100_000,
        idle_ttl_s: float = 600.0,
        max_pin_ttl_s: float = 3600.0,
        sweep_batch: int = 2048,
    ) -> None:
        self.max_entries = max_entries
        self.idle_ttl_s = idle_ttl_s
        self.max_pin_ttl_s = max_pin_ttl_s
        self.sweep_batch = sweep_batch
        self._entries: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._reserved: dict[int, int] = {}
        # (expiry, seq, entry): seq breaks ties so entries are never compared.
        self._timers: list[tuple[float, int, PrefixEntry]] = []
        self._seq = itertools.count()
        # Counters for metrics.
        self.evictions = 0  # removed because the table was full (LRU)
        self.claims = 0  # entries holding a reservation: a live pin or claim, with blocks
        self.expirations = 0  # removed by budget/pin/idle expiry

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prefix_id: str) -> bool:
        return prefix_id in self._entries

    def get(self, prefix_id: str, now: float) -> PrefixEntry | None:
        """Return the live entry, expiring it first if it is dead (no LRU touch)."""
        entry = self._entries.get(prefix_id)
        if entry is None:
            return None
        if self._expired(entry, now):
            self._remove(entry)
            self.expirations += 1
            return None
        if entry.reserved and not entry.holds(now):
            self._unreserve(entry)
        return entry

    def reserved_by_worker(self) -> dict[int, int]:
        """Blocks reserved by active pins, per worker (may lag by one sweep)."""
        return dict(self._reserved)

    # ----------------------------------------------------------------- writes
    def observe(
        self,
        prefix_id: str,
        worker_id: int,
        now: float,
        total_requests: int,
        blocks: int,
        pin_ttl_s: float | None = None,
        claim_s: float = 0.0,
        repeat: bool = False,
    ) -> PrefixEntry | None:
        """Record one routed request of ``prefix_id`` on ``worker_id``.

        First request of a prefix: reuse budget = total_requests - 1. Later requests
        decrement it. The conversation's home follows the request (its newest, longest
        context is now cached there). A pin TTL extends the pin to now + ttl; ``claim_s`` > 0
        claims the home's blocks until now + claim_s (the conversation is expected back by
        then). Returns the entry, or None when the prefix is no longer live: its budget is
        exhausted and it has no pin, or the client said how many requests come and this was
        the last one (then a pin is released at once too). ``repeat``: another attempt at a
        request already recorded (a retry on another worker): the home follows it, but the
        budget is not spent again, and a prefix the first attempt ended stays ended.
        """
        entry = self.get(prefix_id, now)
        if repeat and entry is None:
            return None
        pin_until = now + min(pin_ttl_s, self.max_pin_ttl_s) if pin_ttl_s else 0.0
        if entry is None:
            remaining = max(0, int(total_requests) - 1)
            if remaining <= 0 and pin_until <= now:
                return None  # single-shot request: nothing to remember
            entry = PrefixEntry(prefix_id, worker_id, remaining, now, blocks)
            entry.finite = total_requests > 1
            self._entries[prefix_id] = entry
            if len(self._entries) > self.max_entries:
                _, oldest = self._entries.popitem(last=False)
                self._drop(oldest)
                self.evictions += 1
        else:
            if not repeat:
                entry.remaining = max(0, entry.remaining - 1)
            self._entries.move_to_end(prefix_id)
            if entry.home != worker_id or entry.blocks != blocks:
                self._unreserve(entry)
                entry.home = worker_id
                entry.blocks = blocks
            entry.last_seen = now
        if pin_until > entry.pin_expiry:
            entry.pin_expiry = pin_until
        entry.claim_until = now + claim_s if claim_s > 0 else 0.0
        if entry.remaining <= 0 and (entry.finite or not entry.pinned(now)):
            self._remove(entry)
            self.expirations += 1
            return None
        if entry.holds(now):
            if not entry.reserved:
                self._reserve(entry)
            if not entry.timer_armed:
                self._arm(entry)
        return entry

    def remove(self, prefix_id: str) -> bool:
        entry = self._entries.get(prefix_id)
        if entry is None:
            return False
        self._remove(entry)
        return True

    def forget_worker(self, worker_id: int) -> None:
        """Drop a departed worker's reserved total. Entries homed there are not scanned
        (that would be O(prefixes)); the router ignores homes that are not live workers,
        and their later unreserve is clamped at zero."""
        self._reserved.pop(worker_id, None)

    def sweep(self, now: float, batch: int | None = None) -> int:
        """Expire dead entries in bounded steps; returns the number removed.

        Call from a background task, never on the request path. Inspects at most ``batch``
        pin timers and ``batch`` LRU entries.
        """
        batch = batch or self.sweep_batch
        removed = 0
        timers = self._timers
        # 1) Due pin timers: unreserve, or re-arm when the pin was extended meanwhile.
        n = 0
        while timers and timers[0][0] <= now and n < batch:
            _, _, entry = heapq.heappop(timers)
            n += 1
            entry.timer_armed = False
            if self._entries.get(entry.key) is not entry:
                continue  # entry already gone (evicted/expired): stale timer
            if entry.holds(now):
                self._arm(entry)
                continue
            self._unreserve(entry)
            if entry.remaining <= 0:
                self._remove(entry)
                self.expirations += 1
                removed += 1
        # Stale timers of evicted entries are bounded by eviction rate x max pin TTL;
        # rebuild if they ever dominate (amortized O(1) per timer).
        if len(timers) > 2 * len(self._entries) + 1024:
            self._timers = [t for t in timers if self._entries.get(t[2].key) is t[2]]
            heapq.heapify(self._timers)
        # 2) Oldest entries of the LRU: idle past TTL and not pinned -> forget.
        n = 0
        entries = self._entries
        horizon = now - self.idle_ttl_s
        it = iter(list(itertools.islice(entries.values(), batch)))
        for entry in it:
            n += 1
            if entry.last_seen > horizon:
                break  # LRU order: everything after is fresher
            if entry.pinned(now):
                # Protected by its pin; move it out of the way so the sweep progresses.
                entries.move_to_end(entry.key)
                continue
            self._remove(entry)
            self.expirations += 1
            removed += 1
        return removed

    # ---------------------------------------------------------------- helpers
    def _expired(self, entry: PrefixEntry, now: float) -> bool:
        if entry.pinned(now):
            return False
        return entry.remaining <= 0 or now - entry.last_seen > self.idle_ttl_s

    def _arm(self, entry: PrefixEntry) -> None:
        heapq.heappush(self._timers, (entry.hold_until(), next(self._seq), entry))
        entry.timer_armed = True

    def _reserve(self, entry: PrefixEntry) -> None:
        self.claims += (entry.blocks > 0) - (entry.reserved > 0)
        entry.reserved = entry.blocks
        self._reserved[entry.home] = self._reserved.get(entry.home, 0) + entry.blocks

    def _unreserve(self, entry: PrefixEntry) -> None:
        if not entry.reserved:
            return
        cur = self._reserved.get(entry.home)
        if cur is not None:
            left = cur - entry.reserved
            if left > 0:
                self._reserved[entry.home] = left
            else:
                del self._reserved[entry.home]
        entry.reserved = 0
        self.claims -= 1

    def _drop(self, entry: PrefixEntry) -> None:
        """Release what an entry holds (already unlinked from the table)."""
        self._unreserve(entry)

    def _remove(self, entry: PrefixEntry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        self._drop(entry)
