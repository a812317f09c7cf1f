"""Mid-stream continuation: a worker that fails after tokens were sent hands the rest of the
answer to another worker, as Dynamo's own ``Migration`` operator does for its frontend.

Why here: the processor forwards with ``client.direct``, which bypasses Dynamo's migration, so
without this a worker's death cuts every answer it was streaming. The continuation asks the
next worker for the same request with the tokens already sent appended to the prompt and
``max_tokens`` reduced by their number; the client sees one stream. Up to
``AKR_PROCESSOR_MIGRATION_LIMIT`` times per request (0 = off). Like Dynamo, requests with
guided decoding are not migrated: the grammar's state does not carry over to a new engine.

Memory: the ids sent so far are kept only while the request runs, in a compact ``array``
(8 bytes a token, at most ``max_tokens`` of them), and only when migration is on.
"""

from __future__ import annotations

from array import array
from typing import Any


class Continuation:
    """The tokens sent to the client so far, and the request that continues after them."""

    __slots__ = ("limit", "migrations", "sent")

    def __init__(self, request: dict[str, Any], limit: int) -> None:
        guided = (request.get("sampling_options") or {}).get("guided_decoding")
        self.limit = 0 if guided else limit
        self.migrations = 0
        self.sent: array[int] | None = array("q") if self.limit else None

    def record(self, ids: list[int]) -> None:
        """Remember token ids just sent to the client."""
        if self.sent is not None:
            self.sent.extend(ids)

    def next_request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The request for the next worker, or None when no migration is left (or nothing
        remains to generate). Counts the migration."""
        if self.sent is None or self.migrations >= self.limit:
            return None
        stop = dict(request.get("stop_conditions") or {})
        max_tokens = stop.get("max_tokens")
        if isinstance(max_tokens, int):
            if max_tokens - len(self.sent) <= 0:
                return None
            stop["max_tokens"] = max_tokens - len(self.sent)
        self.migrations += 1
        return {
            **request,
            "token_ids": [*(request.get("token_ids") or []), *self.sent],
            "stop_conditions": stop,
        }
