"""The one error text that means "retry later" on its way from the processor to the client.

The stock Dynamo frontend passes a processor exception's message through as an error body
(or an SSE error event), but not a status code. The processor raises ``Unavailable`` (no
routable worker, a full admission queue, a missed admission deadline); the gateway finds the
marker in the upstream error text with ``parse_unavailable`` and answers 503 with
``Retry-After`` as an OpenAI-style error.
"""

from __future__ import annotations

import re

MARKER = "akr_unavailable"
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
