"""Pure translation of a client request into what Dynamo 1.6.1's stock frontend accepts.

No I/O here, so it is unit-testable and property-testable on its own. The hint contract and the
precedence rules live in ``router.hints``; this module only moves fields around:

* ``prefix_id`` -> header ``x-dynamo-session-id`` (and an annotation);
* every hint and the pin -> ``nvext.annotations`` (appended after the client's own, minus any
  client string in the ``akr.`` namespace, which only the gateway may write);
* ``osl`` (as int), ``latency_sensitivity``, ``priority`` -> the stock ``nvext.agent_hints``,
  with the stock-only keys ``strict_priority``/``speculative_prefill`` passed through; every
  other ``agent_hints`` key is dropped, since the stock frontend rejects unknown keys;
* ``nvext.cache_control`` is dropped (carried by the ``akr.v1.pin`` annotation);
* the worker pins of ``nvext`` (``backend_instance_id`` ...) are dropped, as their headers are;
* the request id (``request_id``: the client's ``x-request-id``, else a new one) goes upstream as
  ``x-request-id`` and as the annotation ``akr.v1.request_id=<id>`` for the processor's trace.
  A body translation leaves otherwise unchanged is not re-encoded: ``upstream_body`` puts the
  annotation in front of the client's bytes.

Client headers are forwarded by allow-list only, so worker-pinning headers
(``x-dynamo-worker-instance-id`` ...) and the stock frontend's other routing headers never pass:
the stock frontend routes among processor instances, so they could not pick a worker anyway
(the router does), only let any client steer load between processors.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from router import hints as H

STOCK_AGENT_HINT_KEYS = (
    "priority",
    "strict_priority",
    "osl",
    "speculative_prefill",
    "latency_sensitivity",
)
PASSTHROUGH_HEADERS = ("authorization", "traceparent", "tracestate")
PARENT_SESSION_HEADER = "x-dynamo-parent-session-id"
# Headers the 1.6.1 frontend binary reads to pin a worker / rank (strings of dynamo/_core.so).
WORKER_PIN_HEADERS = (
    "x-dynamo-worker-instance-id",
    "x-worker-instance-id",
    "x-dynamo-prefill-instance-id",
    "x-prefill-instance-id",
    "x-dynamo-dp-rank",
    "x-dp-rank",
    "x-data-parallel-rank",
    "x-dynamo-prefill-dp-rank",
    "x-prefill-dp-rank",
)
# The body twins of those headers (NvExt fields of 1.6.1): the stock frontend honours them
# just as well, so ``extra_fields: ["worker_id"]`` and a pin would steer a client's load.
WORKER_PIN_NVEXT_KEYS = (
    "backend_instance_id",
    "decode_worker_id",
    "prefill_worker_id",
    "dp_rank",
    "prefill_dp_rank",
)
_DROPPED_NVEXT_KEYS = frozenset(
    ("agent_hints", "cache_control", "annotations", *WORKER_PIN_NVEXT_KEYS)
)
_BASE_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}


@dataclass(frozen=True, slots=True)
class Translation:
    """Result of ``translate``: ``body`` is the original object when ``changed`` is False."""

    body: dict[str, Any]
    headers: dict[str, str]
    hints: H.AgentHints
    changed: bool
    request_id: str


def request_id(headers: Mapping[str, str]) -> str:
    """The request's id: the client's ``x-request-id`` when it is 1..128 characters of the
    prefix-id set, else a new UUID4. Why replace a bad one rather than refuse the request: the
    id only correlates records; the answer carries the id used, so the client still has it."""
    v = headers.get(H.REQUEST_ID_HEADER)
    return v if v is not None and H.valid_request_id(v) else str(uuid.uuid4())


def upstream_headers(
    headers: Mapping[str, str], hints: H.AgentHints, request_id: str
) -> dict[str, str]:
    """Allow-listed client headers, the request id, and the session header derived from
    ``prefix_id``."""
    out = dict(_BASE_HEADERS)
    out[H.REQUEST_ID_HEADER] = request_id
    for name in PASSTHROUGH_HEADERS:
        v = headers.get(name)
        if v is not None:
            out[name] = v
    parent = headers.get(PARENT_SESSION_HEADER)
    if parent is not None:
        out[PARENT_SESSION_HEADER] = H.check_prefix_id(
            parent.strip(), f"header:{PARENT_SESSION_HEADER}"
        )
    if hints.prefix_id is not None:
        out[H.SESSION_HEADER] = hints.prefix_id
    return out


def _stock_agent_hints(client: object, hints: H.AgentHints) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(client, dict):
        for key in ("strict_priority", "speculative_prefill"):
            if key in client:
                out[key] = client[key]
    if hints.priority is not None:
        out["priority"] = hints.priority
    if hints.osl is not None:
        out["osl"] = hints.osl
    if hints.latency_sensitivity is not None:
        out["latency_sensitivity"] = hints.latency_sensitivity
    return out


_encoder = msgspec.json.Encoder()
_JSON_SPACE = b" \t\r\n"


def upstream_body(tr: Translation, raw: bytes) -> bytes:
    """The bytes to send upstream: the translated body encoded, or, when translation changed
    nothing, the client's own bytes with ``"nvext":{"annotations":[<request id>]}`` put in
    front. Why not re-encode: that costs time in the body's size, the insertion one copy. Safe
    because such a body is a JSON object without an ``nvext`` key (see ``translate``)."""
    if tr.changed:
        return _encoder.encode(tr.body)
    head = _encoder.encode({"nvext": {"annotations": [H.request_id_annotation(tr.request_id)]}})
    rest = raw.lstrip(_JSON_SPACE)[1:]  # after the object's "{"
    empty = rest.lstrip(_JSON_SPACE).startswith(b"}")
    return head[:-1] + (b"" if empty else b",") + rest


def translate(body: dict[str, Any], headers: Mapping[str, str], request_id: str) -> Translation:
    """Validate hints (raises ``router.hints.HintError``) and rewrite body and headers;
    ``request_id`` (from ``request_id``) goes upstream as header and annotation."""
    nvext = body.get("nvext")
    if nvext is not None and not isinstance(nvext, dict):
        raise H.HintError("nvext", "must be an object")
    nvext = nvext or {}
    agent_hints = nvext.get("agent_hints")
    hints = H.parse_hints(agent_hints, nvext.get("cache_control"), headers)
    up_headers = upstream_headers(headers, hints, request_id)
    annotations = nvext.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, list) and all(isinstance(a, str) for a in annotations)
    ):
        raise H.HintError("nvext.annotations", "must be an array of strings")
    own = H.encode_annotations(hints)
    if not own and "nvext" not in body:
        # Raw bytes may go upstream as they are, the request id put in front
        # (upstream_body). Any body with "nvext" is re-encoded even when nothing changes: JSON
        # with a duplicated key decodes to its last value here, and the upstream must never
        # see a hint we did not validate.
        return Translation(body, up_headers, hints, changed=False, request_id=request_id)

    new_nvext = {k: v for k, v in nvext.items() if k not in _DROPPED_NVEXT_KEYS}
    stock = _stock_agent_hints(agent_hints, hints)
    if stock:
        new_nvext["agent_hints"] = stock
    kept = H.strip_own(annotations) if annotations is not None else []
    new_nvext["annotations"] = [*kept, *own, H.request_id_annotation(request_id)]
    new_body = {k: v for k, v in body.items() if k != "nvext"}
    new_body["nvext"] = new_nvext
    return Translation(new_body, up_headers, hints, changed=True, request_id=request_id)
