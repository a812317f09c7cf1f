"""What the workers' engines say about themselves: KV block size, capacity, requests held back.

* **block size**: ``kv_cache_block_size`` of the workers' model deployment cards. The
  processor takes it from there at start-up (``agreed_block_size``) and refuses to start when
  the workers disagree, or disagree with ``AKR_PROCESSOR_BLOCK_SIZE`` set explicitly; that
  setting is only the fallback for cards without it. A worker that joins later with another
  size is left out of routing (``mismatched``) and logged.

Two signals our own accounting (router/load.py) cannot produce:

* **capacity**: each worker's KV blocks, from the ``runtime_config.total_kv_blocks`` of its
  model deployment card (vLLM and the mocker publish it per data-parallel rank). Without it
  the operator has to set ``AKR_ROUTER_WORKER_CAPACITY_BLOCKS`` per fleet, one value for
  workers that may differ.
* **waiting**: requests the engine has accepted but did not schedule in its last forward pass
  (``ForwardPassMetrics.queued_requests``): prefills waiting for KV blocks or batch budget,
  and decodes preempted back to the queue. A request sent there waits behind them. Our load
  count sees a full worker only as a number; the engine knows it is stalling.

And the **prompt limit** (``prompt_limit``): the longest prompt some worker takes, from the same
cards (``prompt_limit_tokens``), kept current as workers come and go; the processor answers it
in ``/health``, where the gateway reads it (``frontend/health.py``).

All come from Dynamo's ``FpmEventSubscriber`` in tracking mode (the same discovery and
event plane as KV events; ZMQ on our loopback stacks), read by a background task every
``ENGINE_POLL_S``: the request path only reads two small dicts. Bounded: one entry per
worker that publishes, rebuilt on every refresh, so workers that left disappear with
Dynamo's own purge. The same source as Dynamo's ``thunderagent_router/capacity.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import msgspec

from router.service import BlockSizeMismatch

logger = logging.getLogger(__name__)

ENGINE_POLL_S = 0.05  # period of reading the workers' reports (in memory, ~us per worker)
CARDS_TIMEOUT_S = 10.0  # how long start-up waits for the workers' model cards


def card_block_size(card_json: str) -> int | None:
    """``kv_cache_block_size`` of one model card; None when the card lacks it."""
    try:
        card = json.loads(card_json)
    except (json.JSONDecodeError, TypeError):
        return None
    size = card.get("kv_cache_block_size") if isinstance(card, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def agreed_block_size(cards: dict[str, str], fallback: int, explicit: bool) -> int:
    """The one KV block size of the workers whose cards are in ``cards``.

    Cards that do not state one are skipped; without any, ``fallback``. Raises
    ``BlockSizeMismatch`` when the cards disagree, or when ``explicit`` (the operator set the
    fallback) and they say something else: blocks of two sizes would be counted as one.
    """
    sizes = {w: card_block_size(body) for w, body in cards.items()}
    distinct = sorted({s for s in sizes.values() if s is not None})
    if len(distinct) > 1:
        raise BlockSizeMismatch(
            f"the workers' model cards disagree on kv_cache_block_size: {sizes}; "
            "serve one block size behind a processor"
        )
    if not distinct:
        return fallback
    size = distinct[0]
    if explicit and size != fallback:
        raise BlockSizeMismatch(
            f"AKR_PROCESSOR_BLOCK_SIZE={fallback} but the workers' model cards say "
            f"kv_cache_block_size={size}: unset the variable or make them agree"
        )
    return size


async def wait_for_cards(subscriber: Any, timeout_s: float = CARDS_TIMEOUT_S) -> dict[str, str]:
    """The workers' model cards, once the subscriber has any (empty after ``timeout_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        cards = subscriber.get_model_cards()
        if cards or loop.time() >= deadline:
            return dict(cards)
        await asyncio.sleep(0.05)


def capacity_blocks(card_json: str, block_size: int) -> int | None:
    """A worker's KV capacity in our blocks from its card; None when the card lacks it.

    ``total_kv_blocks`` counts the engine's blocks of ``kv_cache_block_size`` tokens per
    data-parallel rank; a worker serves ``data_parallel_size`` ranks, and we route to the
    worker (router/signals.py sums its ranks), so the capacity is the sum.
    """
    card = _parse_card(card_json)
    return None if card is None else _card_capacity(card, block_size)


def _parse_card(card_json: str) -> dict[str, Any] | None:
    """A model card's JSON object, or None when it is not one."""
    try:
        card = json.loads(card_json)
    except (json.JSONDecodeError, TypeError):
        return None
    return card if isinstance(card, dict) else None


def _card_capacity(card: dict[str, Any], block_size: int) -> int | None:
    rc = card.get("runtime_config")
    rc = rc if isinstance(rc, dict) else {}
    blocks = rc.get("total_kv_blocks")
    card_block = card.get("kv_cache_block_size", block_size)
    ranks = rc.get("data_parallel_size")
    ranks = 1 if ranks is None else ranks
    if not all(_positive(v) for v in (blocks, card_block, ranks)):
        return None
    return max(1, blocks * card_block * ranks // block_size)


def prefill_chunk_tokens(cards: dict[str, str]) -> int | None:
    """The engines' prefill pass (``runtime_config.max_num_batched_tokens``), the smallest any
    card reports; None when none does. Why: the router's prefill curve goes in passes of this
    size (router/cost.py), and it is the engine's setting, so it comes from the engine."""
    chunks = []
    for card_json in cards.values():
        card = _parse_card(card_json)
        rc = card.get("runtime_config") if card is not None else None
        chunk = rc.get("max_num_batched_tokens") if isinstance(rc, dict) else None
        if _positive(chunk):
            chunks.append(int(chunk))
    return min(chunks) if chunks else None


class _Queued(msgspec.Struct, frozen=True):
    num_prefill_requests: int = 0
    num_decode_requests: int = 0


class _Fpm(msgspec.Struct):
    """The two fields of ``dynamo.common.forward_pass_metrics.ForwardPassMetrics`` we read
    (version 1; unknown fields are ignored, so a later minor addition still decodes)."""

    version: int = 0
    worker_id: str = ""
    queued_requests: _Queued = _Queued()


_FPM_VERSION = 1
_decode_fpm = msgspec.msgpack.Decoder(_Fpm).decode


def waiting_requests(stats: dict[tuple[str, int], bytes]) -> dict[int, int]:
    """Latest FPM per (worker, dp rank) -> requests held back per worker (only those > 0).

    Messages that do not decode or carry another schema version are skipped.
    """
    out: dict[int, int] = {}
    for (worker, _rank), raw in stats.items():
        try:
            fpm = _decode_fpm(raw)
            wid = int(worker)
        except (msgspec.DecodeError, ValueError, TypeError):
            continue
        if fpm.version != _FPM_VERSION:
            continue
        n = fpm.queued_requests.num_prefill_requests + fpm.queued_requests.num_decode_requests
        if n > 0:
            out[wid] = out.get(wid, 0) + n
    return out


class EngineState:
    """Per-worker capacity and waiting requests, refreshed off the request path.

    ``capacity`` and ``waiting`` are replaced (never mutated) on each refresh, so a reader
    on the event loop always sees one consistent snapshot.
    """

    def __init__(self, subscriber: Any, block_size: int, poll_s: float) -> None:
        self._sub = subscriber
        self._block_size = block_size
        self._poll_s = poll_s
        # card body -> (capacity, block size, prompt limit) parsed once (bodies repeat)
        self._cards: dict[str, tuple[int | None, int | None, int | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.capacity: dict[int, int] = {}
        self.waiting: dict[int, int] = {}
        # Workers whose cards state another KV block size than this processor counts in (one
        # that joined after start-up): their blocks would be miscounted, so none is routed to.
        self.mismatched: frozenset[int] = frozenset()
        # The longest prompt a worker takes now; the last known while no card states one.
        self.prompt_limit: int | None = None
        self.errors = 0

    def start(self) -> None:
        """Poll the subscriber (its ``start_tracking()`` already called) in the background."""
        self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            self._sub.shutdown()
        except Exception as exc:  # shutting down anyway
            logger.debug("engine state subscriber shutdown: %r", exc)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                self.refresh()
            except Exception:  # a card or stats shape nobody foresaw: keep polling the rest
                self.errors += 1
                logger.exception("engine state refresh failed; keeping the last snapshot")

    def refresh(self) -> None:
        """One snapshot of the subscriber's maps (in-memory, no I/O; ~µs per worker)."""
        try:
            cards = self._sub.get_model_cards()
            stats = self._sub.get_recent_stats()
        except Exception as exc:  # keep the last snapshot; count, log once per kind
            self.errors += 1
            if self.errors == 1:
                logger.warning("engine state unavailable: %r", exc)
            return
        capacity: dict[int, int] = {}
        mismatched: set[int] = set()
        limits: list[int] = []
        for worker, body in cards.items():
            if body not in self._cards:
                if len(self._cards) > 4 * max(len(cards), 16):  # bodies of departed workers
                    self._cards.clear()
                self._cards[body] = (
                    capacity_blocks(body, self._block_size),
                    card_block_size(body),
                    prompt_limit_tokens({worker: body}, self._block_size),
                )
            blocks, size, limit = self._cards[body]
            if limit is not None:
                limits.append(limit)
            try:
                wid = int(worker)
            except (ValueError, TypeError):
                continue
            if blocks is not None:
                capacity[wid] = blocks
            if size is not None and size != self._block_size:
                mismatched.add(wid)
        if mismatched - self.mismatched:
            logger.error(
                "workers %s state a kv_cache_block_size other than this processor's %d: "
                "not routed to (restart the processor if the fleet changed block size)",
                sorted(f"{w:x}" for w in mismatched - self.mismatched),
                self._block_size,
            )
        self.capacity = capacity
        self.mismatched = frozenset(mismatched)
        self.waiting = waiting_requests(stats)
        if limits and max(limits) != self.prompt_limit:
            logger.info("longest prompt a worker takes: %d tokens", max(limits))
            self.prompt_limit = max(limits)


def prompt_limit_tokens(cards: dict[str, str], block_size: int) -> int | None:
    """The longest prompt some worker can take, from the workers' cards: per card the smallest
    of the model's ``context_length``, the engine's ``runtime_config.context_length`` and its
    KV capacity, then the largest over the workers; None when no card states any.

    Why: the processor registers the public model with this as its ``context_length``; the
    stock frontend lists it as the model's ``context_window``, and the gateway checks prompts
    and sizes its body limit against what a worker can really hold (chaos stack: 65536 tokens
    of KV, not the model's 131072, so 512 KiB of text and 2.5 MiB of body). Dynamo 1.6.1's
    stock frontend does not refuse longer prompts by this itself; only its body limit
    (``DYN_HTTP_BODY_LIMIT_MB``, set by the launchers) keeps huge ones from the processor.
    """
    best: int | None = None
    for body in cards.values():
        card = _parse_card(body)
        if card is None:
            continue
        rc = card.get("runtime_config") or {}
        engine_ctx = rc.get("context_length") if isinstance(rc, dict) else None
        blocks = _card_capacity(card, block_size)
        limits = [
            v
            for v in (card.get("context_length"), engine_ctx, blocks and blocks * block_size)
            if _positive(v)
        ]
        if limits:
            best = max(best or 0, min(limits))
    return best


def _positive(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
