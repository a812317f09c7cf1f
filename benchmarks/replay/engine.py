"""One simulated vLLM engine of Dynamo 1.6.1's mocker, stepped on a virtual clock.

This is a port of the mocker's aggregated vLLM scheduler (AISimulate core 0.13.0, the engine
behind ``dynamo.replay``), kept to what the default configuration exercises, so that a replay
here reproduces Dynamo's own replay request by request:

* block pool: anonymous free capacity is used before any cached block is evicted; cached blocks
  whose last reference goes away join an LRU (a request releases its blocks tail first, so
  leaves are evicted before their parents); a full block becomes visible to prefix lookups as
  soon as the pass that computes it is scheduled, even for later requests of the same pass;
  a second copy of an already cached hash is kept but never visible;
* scheduler: running requests first (oldest first) under the ``max_num_batched_tokens``
  budget, then the waiting queue in FIFO order while fewer than ``max_num_seqs`` run; a
  waiting request is admitted only if its whole known sequence fits in the blocks not held by
  running requests; chunked prefill; a full prefix hit still recomputes the last block;
  an allocation that does not fit preempts the newest running request (LIFO), which frees its
  blocks and goes back to the head of the waiting queue;
* timing: the default polynomials (prefill on the pass's new prompt tokens, decode on the
  KV share of the requests that already produced a token; a first token adds no decode time),
  divided by ``speedup_ratio`` times this worker's speed and kept to whole nanoseconds; every
  token of a pass is stamped at the pass's end.

State changes (admission, block allocation, completion) happen when a pass starts, as in the
mocker; the pass's outputs and KV events are handed back for delivery at its end.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_MASK = (1 << 64) - 1
_WAITING, _RUNNING, _PREEMPTED, _FINISHED = 0, 1, 2, -1
_SCHEDULED, _BLOCKED, _SELF_PREEMPTED = 0, 1, 2


def mix64(x: int) -> int:
    """SplitMix64 finalizer on a Python int (block identities of generated tokens)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def prefill_ms(batch_size: int, new_tokens_per_request: int) -> float:
    """The mocker's default prefill polynomial on the batch's total new tokens (ms)."""
    if batch_size == 0 or new_tokens_per_request <= 0:
        return 0.0
    t = float(batch_size * new_tokens_per_request)
    return 4.209989e-07 * t * t + 1.518344e-02 * t + 1.650142e01


def decode_ms(active_kv_tokens: int, total_kv_tokens: int) -> float:
    """The mocker's default decode polynomial on the active share of the KV pool (ms)."""
    p = min(active_kv_tokens / total_kv_tokens, 1.0) if total_kv_tokens > 0 else 1.0
    return max(-25.74 * p * p + 54.01 * p + 5.74, 1.0)


def _scaled(ms: float, speed: float) -> float:
    """A modeled duration divided by the speed, with the nanosecond roundings the mocker's
    ``Duration`` arithmetic applies (speed 0 means unscaled, as in the mocker). The mocker
    converts a third time; that one is exact and left out."""
    whole, nanos = divmod(round(ms / 1000.0 * 1e9), 1_000_000_000)
    d = whole + nanos / 1e9
    if speed != 1.0 and speed > 0.0 and d > 0.0:
        whole, nanos = divmod(round(d / speed * 1e9), 1_000_000_000)
        d = whole + nanos / 1e9
    return d * 1000.0


def pass_prefill_ms(tokens: int, speed: float) -> float:
    """The prefill part of one pass computing ``tokens`` new prompt tokens on a worker of
    ``speed`` (ms), as the engine times it."""
    return _scaled(prefill_ms(1, tokens), speed)


def solo_prefill_ms(tokens: int, speed: float, max_num_batched_tokens: int) -> float:
    """Time to first token of a request computing ``tokens`` prompt tokens alone on an idle
    worker: its chunks of at most ``max_num_batched_tokens``, one pass each (ms)."""
    total, left = 0.0, max(tokens, 1)
    while left > 0:
        chunk = min(left, max_num_batched_tokens)
        total += pass_prefill_ms(chunk, speed)
        left -= chunk
    return total


def least_prefill_ms(tokens: int, speed: float, max_num_batched_tokens: int) -> float:
    """A lower bound on the prefill time of ``tokens`` prompt tokens however the engine cuts
    them into passes (ms): the cheapest split into equal chunks of at most
    ``max_num_batched_tokens``, each pass alone. Sharing a pass only adds to its cost, and the
    polynomial's per-pass constant against its square makes the cost convex in the number of
    passes, so the search stops at the first rise."""
    n = max(tokens, 1)
    best = float("inf")
    for k in range(-(-n // max_num_batched_tokens), n + 1):
        small, extra = divmod(n, k)
        cost = (k - extra) * pass_prefill_ms(small, speed) + (
            extra * pass_prefill_ms(small + 1, speed) if extra else 0.0
        )
        if cost >= best:
            break
        best = cost
    return best


class EngineState:
    """One request inside an engine: its KV lease, progress and timestamps."""

    __slots__ = (
        "alloc_tokens",
        "computed",
        "copies",
        "finish_ms",
        "first_token_ms",
        "generated",
        "hashes",
        "length",
        "max_out",
        "pass_no",
        "pending",
        "prompt_len",
        "req",
        "reused_tokens",
        "salt",
        "sched_prefix",
        "sched_prompt",
        "sched_used",
        "status",
    )

    def __init__(self, req: Any, prompt_len: int, max_out: int, blocks: list[int], bs: int):
        self.req = req
        self.prompt_len = prompt_len
        self.max_out = max_out
        self.length = prompt_len
        self.generated = 0
        self.computed = 0
        self.alloc_tokens = 0
        self.status = _WAITING
        n = -(-prompt_len // bs)
        # Block identities: the prompt's full blocks are known; a partial tail gets its identity
        # once generated tokens fill it.
        self.hashes: list[int | None] = list(blocks[:n]) + [None] * (n - min(len(blocks), n))
        self.copies: list[int] = [-1] * n
        self.pending: list[bool] = [False] * n
        self.reused_tokens: int | None = None
        self.first_token_ms: float | None = None
        self.finish_ms: float | None = None
        self.salt = 0
        self.pass_no = -1  # the engine pass that last scheduled this request
        self.sched_used = 0  # tokens, prompt tokens and prompt-before of that scheduling
        self.sched_prompt = 0
        self.sched_prefix = 0


@dataclass(slots=True)
class PassResult:
    """What one pass hands back for delivery at ``end_ms``."""

    end_ms: float
    first_tokens: Sequence[EngineState] = ()  # a list once the pass has any
    finished: Sequence[EngineState] = ()
    # In order: a hash that became visible (h >= 0), or whose last copy was evicted (~h < 0).
    kv_events: Sequence[int] = ()


class Engine:
    """One worker: the mocker's vLLM scheduler over its block pool (see the module doc)."""

    def __init__(
        self,
        num_gpu_blocks: int,
        block_size: int,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        enable_chunked_prefill: bool = True,
        speed: float = 1.0,
        decode_speedup_ratio: float = 1.0,
    ) -> None:
        self.num_gpu_blocks = num_gpu_blocks
        self.bs = block_size
        self.max_num_seqs = max_num_seqs
        self.max_batched = max_num_batched_tokens
        self.chunked = enable_chunked_prefill
        self.speed = speed
        self.decode_speed = speed * decode_speedup_ratio  # the mocker's effective decode speedup
        self.waiting: deque[EngineState] = deque()
        self.running: list[EngineState] = []
        # Block pool. A copy id is an int; cached copies have an entry in ``_hash``/``_refs``.
        self._free = num_gpu_blocks  # anonymous unoccupied capacity
        self._next_copy = 0
        self._nprivate = 0
        self._hash: dict[int, int] = {}  # cached copy -> hash
        self._refs: dict[int, int] = {}  # cached copy -> references
        self._primary: dict[int, int] = {}  # hash -> visible copy
        self._dups: dict[int, deque[int]] = {}  # hash -> further copies (not visible)
        self._lru: OrderedDict[int, None] = OrderedDict()  # unreferenced cached copies
        self._events: list[int] = []  # KV events in order: h stored, ~h (negative) removed
        self.preemptions = 0
        self._pass = 0
        self._count = self._isl = self._prefix = 0  # the pass's prefill batch
        self._kv_tokens = num_gpu_blocks * block_size
        # Analyses only (benchmarks/replay/tail_parts.py): called after each pass is scheduled
        # with its start, its result and the requests that computed prompt tokens in it.
        self.on_pass: Callable[[float, PassResult, list[EngineState]], None] | None = None

    # ---- pool -------------------------------------------------------------------------------
    def num_active_blocks(self) -> int:
        """Blocks held by requests (the pool minus free and unreferenced cached blocks)."""
        return self.num_gpu_blocks - self._free - len(self._lru)

    def num_cached_blocks(self) -> int:
        """Blocks holding a cached hash (referenced or not)."""
        return len(self._hash)

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    def _evict_one(self) -> None:
        copy, _ = self._lru.popitem(last=False)
        h = self._hash.pop(copy)
        del self._refs[copy]
        if self._primary.get(h) == copy:
            dups = self._dups.get(h)
            if dups:
                self._primary[h] = dups.popleft()
                if not dups:
                    del self._dups[h]
            else:
                del self._primary[h]
                self._events.append(~h)
        else:
            dups = self._dups[h]
            dups.remove(copy)
            if not dups:
                del self._dups[h]

    def _release(self, copy: int) -> None:
        refs = self._refs.get(copy)
        if refs is None:  # private copy: its capacity is free again
            self._free += 1
            self._nprivate -= 1
            return
        refs -= 1
        self._refs[copy] = refs
        if refs == 0:
            self._lru[copy] = None

    def _allocate(self, s: EngineState, cumulative: int, reusable_blocks: int) -> bool:
        """Grow ``s``'s lease to ``cumulative`` tokens, pinning ``reusable_blocks`` cached prefix
        blocks; False (and nothing changed) when the pool cannot hold it."""
        bs = self.bs
        n = len(s.copies)
        prev = min(-(-s.alloc_tokens // bs), n)
        target = min(-(-cumulative // bs), n)
        if target <= prev:
            if cumulative > s.alloc_tokens:
                s.alloc_tokens = cumulative
            return True
        reuse = max(reusable_blocks - prev, 0)
        count = target - prev
        fresh = count - reuse
        hits = [self._primary[s.hashes[i]] for i in range(prev, prev + reuse)]  # type: ignore[index]
        evict = fresh - self._free
        if evict > 0:
            lru = self._lru
            inactive_hits = len({c for c in hits if c in lru})
            if evict > len(lru) - inactive_hits:
                return False
        refs = self._refs
        lru = self._lru
        for c in hits:
            r = refs[c]
            if r == 0:
                del lru[c]
            refs[c] = r + 1
        if evict > 0:
            self._free = 0
            for _ in range(evict):
                self._evict_one()
        else:
            self._free -= fresh
        copies, pending, hashes = s.copies, s.pending, s.hashes
        for k, c in enumerate(hits):
            copies[prev + k] = c
            pending[prev + k] = False
        nxt = self._next_copy
        for i in range(prev + reuse, target):
            copies[i] = nxt
            nxt += 1
            pending[i] = hashes[i] is not None
        self._next_copy = nxt
        self._nprivate += fresh
        s.alloc_tokens = cumulative
        return True

    def _finalize(self, s: EngineState, before: int, after: int) -> None:
        """Make the full blocks computed by this scheduling decision visible to lookups."""
        bs = self.bs
        first = before // bs
        last = min(after // bs, len(s.copies))
        hashes, pending, copies = s.hashes, s.pending, s.copies
        for i in range(first, last):
            h = hashes[i]
            if h is None:
                parent = hashes[i - 1] if i > 0 else 0
                h = mix64((parent or 0) ^ s.salt ^ (i * 0x9E3779B97F4A7C15 & _MASK))
                hashes[i] = h
                pending[i] = True
            if not pending[i]:
                continue
            pending[i] = False
            c = copies[i]
            self._nprivate -= 1
            self._hash[c] = h
            self._refs[c] = 1
            if h in self._primary:
                self._dups.setdefault(h, deque()).append(c)
            else:
                self._primary[h] = c
                self._events.append(h)

    def _release_all(self, s: EngineState) -> None:
        copies, pending = s.copies, s.pending
        for i in range(len(copies) - 1, -1, -1):
            c = copies[i]
            if c >= 0:
                self._release(c)
                copies[i] = -1
            pending[i] = False
        s.alloc_tokens = 0

    def _prefill_cost(self, s: EngineState) -> tuple[int, int]:
        """(cached tokens, cached tokens held by running requests) of ``s``'s known sequence,
        after the rule that a full hit recomputes its last block."""
        primary, refs = self._primary, self._refs
        overlap = active = 0
        for h in s.hashes:
            if h is None:
                break
            c = primary.get(h)
            if c is None:
                break
            overlap += 1
            if refs[c] > 0:
                active += 1
        bs = self.bs
        length = s.length
        cached = min(overlap * bs, length)
        active_cached = min(active * bs, length)
        if s.generated < s.max_out:
            cap = ((length - 1) // bs) * bs
            if cached > cap:
                cached = cap
                active_cached = min(active_cached, cap)
        return cached, active_cached

    # ---- scheduler --------------------------------------------------------------------------
    def submit(self, s: EngineState) -> None:
        if -(-s.length // self.bs) > self.num_gpu_blocks:
            raise ValueError(
                f"request {s.req.request_id}: {s.length} prompt tokens exceed the worker's "
                f"{self.num_gpu_blocks} blocks of {self.bs} (the mocker would reject it)"
            )
        self.waiting.append(s)

    def _preempt(self) -> EngineState | None:
        """LIFO preemption: the newest running request goes back to the waiting queue's head."""
        if not self.running:
            return None
        victim = self.running.pop()
        victim.status = _PREEMPTED
        victim.computed = 0
        self._release_all(victim)
        self.waiting.appendleft(victim)
        self.preemptions += 1
        return victim

    def execute_pass(self, now_ms: float) -> PassResult:
        """Schedule one forward pass at ``now_ms`` and return what it produces at its end."""
        bs = self.bs
        self._pass += 1
        pno = self._pass
        self._count = self._isl = self._prefix = 0
        budget = self.max_batched
        preempted_any = False
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            s = running[i]
            length = s.length
            if (
                s.computed == length - 1
                and s.generated > 0
                and -(-s.alloc_tokens // bs) >= len(s.copies)
            ):
                # A decode step that needs no new block (the common case, kept short).
                if s.alloc_tokens < length:
                    s.alloc_tokens = length
                s.computed = length
                s.pass_no = pno
                s.sched_used = 1
                s.sched_prompt = 0
                budget -= 1
                i += 1
                if length % bs == 0:
                    self._finalize(s, length - 1, length)
                continue
            out, budget, pre = self._schedule(s, False, 0, budget)
            preempted_any |= pre
            if out == _SCHEDULED:
                i += 1
            elif out == _BLOCKED:
                break
            # _SELF_PREEMPTED: the request left ``running``; the next one took its index.
        while not preempted_any and len(running) < self.max_num_seqs and self.waiting:
            s = self.waiting[0]
            cached, active_cached = self._prefill_cost(s)
            needed = -(-s.length // bs) - active_cached // bs
            if needed > self.num_gpu_blocks - self.num_active_blocks():
                break
            before = budget
            out, budget, pre = self._schedule(s, True, cached, budget)
            preempted_any |= pre
            if out != _SCHEDULED or (budget == before and budget == 0):
                break
        count = self._count
        pre_ms = 0.0
        if count:
            new_per_request = self._isl // count - self._prefix // count
            pre_ms = _scaled(prefill_ms(count, new_per_request), self.speed)
        result = PassResult(end_ms=now_ms)
        self._emit(now_ms + pre_ms, result)
        if self._events:
            result.kv_events, self._events = self._events, []
        if self.on_pass is not None:
            ran = (*self.running, *result.finished)
            self.on_pass(now_ms, result, [s for s in ran if s.pass_no == pno and s.sched_prompt])
        return result

    def _schedule(
        self, s: EngineState, from_waiting: bool, cached: int, budget: int
    ) -> tuple[int, int, bool]:
        """The mocker's ``schedule_request``: (outcome, token budget left, whether anything was
        preempted). A preempted request that was already scheduled in this pass gives its
        tokens back to the budget and its prompt work back to the batch."""
        bs = self.bs
        if s.computed != 0:
            cached = 0
        elif not from_waiting:
            cached = self._prefill_cost(s)[0]
        before = s.computed + cached
        prompt_len = s.prompt_len
        prompt_before = min(before, prompt_len)
        remaining = s.length - before
        if remaining > 0 and not self.chunked and prompt_len - prompt_before > budget:
            return _BLOCKED, budget, False
        desired = min(remaining, budget)
        if desired == 0 and remaining > 0:
            return _BLOCKED, budget, False
        target = before + desired
        after = target
        preempted = False
        while True:
            if target <= s.alloc_tokens or self._allocate(s, target, cached // bs):
                s.computed = after
                break
            victim = self._preempt()
            if victim is None:
                after = before
                break
            preempted = True
            if victim.pass_no == self._pass:
                victim.pass_no = -1
                budget += victim.sched_used
                if victim.sched_prompt > 0:
                    self._count -= 1
                    self._isl -= victim.sched_prefix + victim.sched_prompt
                    self._prefix -= victim.sched_prefix
            if victim is s:
                return _SELF_PREEMPTED, budget, True
        used = after - before
        if used == 0 and after < s.length:
            return _BLOCKED, budget, preempted
        self._finalize(s, before, after)
        prompt_tokens = min(after, prompt_len) - prompt_before
        s.pass_no = self._pass
        s.sched_used = used
        s.sched_prompt = prompt_tokens
        s.sched_prefix = prompt_before
        if prompt_tokens > 0:
            self._count += 1
            self._isl += prompt_before + prompt_tokens
            self._prefix += prompt_before
        if from_waiting:
            self.waiting.popleft()
            self.running.append(s)
            s.status = _RUNNING
            # The most any admission reused, as Dynamo's replay records it (a preempted request
            # re-admitted over its own released blocks can count them).
            if s.reused_tokens is None or cached > s.reused_tokens:
                s.reused_tokens = cached
        return _SCHEDULED, budget - used, preempted

    def _emit(self, decode_start_ms: float, result: PassResult) -> None:
        """Generate one token for every request whose known sequence is computed. The decode
        time covers the requests that already produced a token; a request producing its first
        token adds no decode time (as the 1.6.1 mocker times it)."""
        ready = []
        total = 0
        decoding = 0
        for s in self.running:
            if s.computed >= s.length:
                ready.append(s)
                if s.generated > 0:
                    total += s.length
                    decoding += 1
        end = decode_start_ms
        if decoding:
            end += _scaled(decode_ms(total, self._kv_tokens), self.decode_speed)
        result.end_ms = end
        if not ready:
            return
        bs = self.bs
        first: list[EngineState] = []
        finished: list[EngineState] = []
        for s in ready:
            length = s.length + 1
            s.length = length
            s.generated += 1
            if (length - 1) % bs == 0:
                s.hashes.append(None)
                s.copies.append(-1)
                s.pending.append(False)
            if s.generated == 1:
                s.first_token_ms = end
                first.append(s)
            if s.generated >= s.max_out:
                s.finish_ms = end
                self._release_all(s)
                s.status = _FINISHED
                finished.append(s)
        if first:
            result.first_tokens = first
        if finished:
            result.finished = finished
            self.running = [s for s in self.running if s.status == _RUNNING]
