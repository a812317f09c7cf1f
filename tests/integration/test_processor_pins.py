"""Cache pins expire on time: the claims gauge (pins only here: no iat hint) and the prefix
table entry.

A pin reserves its prompt's blocks on the home worker, so prompts here span several KV
blocks (a pin on a prompt shorter than one block reserves nothing and is not counted).
The processor sweeps every second; expiry is polled, bounded by deadlines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from deploy.local_stack import LocalStack, StackConfig
from processor.handler import SWEEP_INTERVAL_S
from router.load import HOLD_PRIOR_MS
from tests.integration.processor_util import chat, metric, poll, running_stack, scrape, trace_of

pytestmark = pytest.mark.integration

SWEEP_S = SWEEP_INTERVAL_S
SLACK_S = 1.0  # scrape latency and scheduling on a busy 2-core box
LONG = "the agent keeps its whole tool transcript in context " * 20  # ~5 blocks


@pytest.fixture(scope="module")
def pin_stack() -> Iterator[LocalStack]:
    config = StackConfig(workers=2, speedup=10.0)
    with running_stack(config) as running:
        yield running


def _pins(stack: LocalStack) -> float:
    return metric(scrape(stack.processor_metrics_url), "akr_processor_claims")


def _pinned_call(stack: LocalStack, prefix: str, ttl: str | None, turn: int) -> str:
    nvext: dict = {"agent_hints": {"prefix_id": prefix, "total_requests": 1}}
    if ttl is not None:
        nvext["cache_control"] = {"type": "ephemeral", "ttl": ttl}
    rid, _ = chat(stack.gateway_url, stack.model_name, f"{LONG} turn {turn}", nvext=nvext)
    return rid


def test_pin_expires_on_time(pin_stack: LocalStack) -> None:
    stack = pin_stack
    poll("no pins", lambda: _pins(stack) == 0, 10)
    sent = time.monotonic()
    rid = _pinned_call(stack, "pin-expiry", "2s", 0)
    answered = time.monotonic()
    rec = trace_of(stack, rid)
    assert rec.pin_ttl_s == 2.0 and rec.prompt_tokens >= 2 * rec.block_size
    poll("the pin in the gauge", lambda: _pins(stack) == 1, 2.0)
    assert time.monotonic() < sent + 2.0, "the pin must still be live here"
    poll("the pin to expire", lambda: _pins(stack) == 0, 2.0 + SWEEP_S + SLACK_S + 1.0)
    expired = time.monotonic()
    assert expired >= sent + 2.0, f"expired early: {expired - sent:.2f} s"
    assert expired <= answered + 2.0 + SWEEP_S + SLACK_S, f"late: {expired - answered:.2f} s"

    # The table entry is gone too: the next request of the prefix starts a new conversation.
    poll(
        "the entry out of the prefix table",
        lambda: metric(scrape(stack.processor_metrics_url), "akr_processor_tracked_prefixes") == 0,
        2.0,
    )
    rid2 = _pinned_call(stack, "pin-expiry", None, 1)
    rec2 = trace_of(stack, rid2)
    assert rec2.reason != "pin" and rec2.pin_ttl_s is None
    # A finished answer of 4 tokens replaces the prior hold time with its measured decode.
    poll(
        "the measured KV hold time",
        lambda: (
            metric(scrape(stack.processor_metrics_url), "akr_processor_kv_hold_ms")
            not in (0.0, HOLD_PRIOR_MS)
        ),
        SWEEP_S + SLACK_S,
    )
    assert _pins(stack) == 0
    print(f"\npin 2s: gauge 1 -> 0 after {expired - sent:.2f} s (sweep {SWEEP_S} s)")


def test_refresh_extends_and_first_only_keeps_the_pin(pin_stack: LocalStack) -> None:
    """NAT's ALWAYS mode re-sends cache_control (pin extended); FIRST_ONLY omits it later
    (the pin keeps its first deadline)."""
    stack = pin_stack
    poll("no pins", lambda: _pins(stack) == 0, 10)
    t0 = time.monotonic()
    _pinned_call(stack, "pin-always", "2s", 0)
    _pinned_call(stack, "pin-first-only", "2s", 0)
    poll("both pins", lambda: _pins(stack) == 2, 2.0)
    time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))  # the second turn, one second later
    t1 = time.monotonic()
    _pinned_call(stack, "pin-always", "2s", 1)  # refreshed: now expires ~t1 + 2
    _pinned_call(stack, "pin-first-only", None, 1)  # no cache_control: still ~t0 + 2
    poll("the first-only pin to expire", lambda: _pins(stack) == 1, 2.5 + SLACK_S)
    one_left = time.monotonic()
    assert one_left < t1 + 2.0, "the refreshed pin must outlive the first-only one"
    poll("the refreshed pin to expire", lambda: _pins(stack) == 0, 2.5 + SLACK_S)
    both_gone = time.monotonic()
    assert both_gone >= t1 + 2.0
    print(
        f"\npins: first-only expired at +{one_left - t0:.2f} s, refreshed at "
        f"+{both_gone - t0:.2f} s (refresh at +{t1 - t0:.2f} s)"
    )
