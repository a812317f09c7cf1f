"""The one error text that means "retry later" on its way from the processor to the client.

The processor raises ``Unavailable`` (no routable worker, a full admission queue, a missed
admission deadline). The stock Dynamo frontend (1.6.1) does not pass an engine's error text to
its client: it answers a generic "Internal server error". What it does keep is the status of
Dynamo's ``HttpError``, so the processor raises ``HttpError(503, <this text>)``
(processor/health.py ``as_http_error``): the client of the stock frontend gets 503
(non-streamed) or an SSE error event with code 503 (streamed). The text, marker included,
stays in the processor's trace record and log (docs/DESIGN.md, "Retry-later answers", has
what the frontend sends); ``parse_unavailable`` reads it wherever the text does arrive (a
component that sees the processor's own error, or a future frontend).
"""

from __future__ import annotations

import re

MARKER = "akr_unavailable"
# Every reason the processor raises: no routable worker (processor/health.py), no shared
# router or one that does not answer (processor/routing.py), admission refused
# (processor/admission.py).
REASONS = ("no_worker", "no_router", "router_timeout", "admission_deadline", "admission_queue_full")
_PATTERN = re.compile(MARKER + r" retry_after_s=(\d+) reason=([a-z_]+)")


class Unavailable(RuntimeError):
    """No capacity now; the client should retry after ``retry_after_s`` seconds."""

    def __init__(self, reason: str, retry_after_s: int, detail: str = "") -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        text = f"{MARKER} retry_after_s={retry_after_s} reason={reason}"
        super().__init__(f"{text}: {detail}" if detail else text)


def parse_unavailable(text: str) -> tuple[str, int] | None:
    """(reason, retry_after_s) when ``text`` carries the marker, else None."""
    m = _PATTERN.search(text)
    return (m.group(2), int(m.group(1))) if m else None
