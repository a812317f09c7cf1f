"""The agent-hint contract, owned here and shared by the gateway (``frontend/``) and the processor.

Why one module: the NAT client, the gateway and the processor must agree on field names, ranges
and on how hints cross the stock Dynamo frontend, which rejects NAT's ``nvext.agent_hints`` keys
``prefix_id``/``total_requests``/``iat`` and ``nvext.cache_control``.

Client input (gateway side)
---------------------------
Body ``nvext.agent_hints`` (NAT ``nat.llm.dynamo_llm``)::

    field                type / range                                  AgentHints attribute
    prefix_id            str, 1..256 chars of [A-Za-z0-9._:@/+=-]      prefix_id
    total_requests       int >= 1 (bools rejected), <= 1_000_000       total_requests
    osl                  int 1..2**31-1 or "LOW"|"MEDIUM"|"HIGH"       osl (tokens; 128/512/2048)
    iat                  int 1..86_400_000 or "LOW"|"MEDIUM"|"HIGH"    iat_ms (ms; 50/250/750)
    latency_sensitivity  finite number >= 0 (bools rejected)           latency_sensitivity
    priority             int in int32 range (bools rejected)           priority

Body ``nvext.cache_control`` = ``{"type": "ephemeral", "ttl": "<N>ms|<N>s|<N>m|<N>h"}``:
``type`` must be ``"ephemeral"``; ``ttl`` (string with unit, or a bare number of seconds) must be
in (0, 24 h]; a missing ``ttl`` means ``DEFAULT_PIN_TTL_S`` (5 min, like Anthropic's default).

Unknown keys in ``agent_hints`` are *tolerated and dropped* (NAT merges its hints over whatever
the caller already had, so foreign keys are normal), and ``None`` values mean "not given". The
stock keys ``strict_priority`` and ``speculative_prefill`` are not ours: the gateway passes them
through untouched for the stock frontend to validate. A ``null`` ``agent_hints`` or
``cache_control`` equals an absent one; any other non-object is an error.

Header hints, for clients that cannot change bodies::

    x-akr-prefix-id, x-akr-total-requests, x-akr-osl, x-akr-iat, x-akr-latency-sensitivity,
    x-akr-priority, x-akr-cache-ttl (implies type "ephemeral"), x-akr-cache-type

Header values are strings with the same ranges (numbers in decimal, osl/iat may be LOW/MEDIUM/HIGH).

Precedence, per field, highest first::

    prefix_id         body agent_hints.prefix_id > x-akr-prefix-id > x-dynamo-session-id
    other hints       body agent_hints.<field>   > x-akr-<field>
    pin (type, ttl)   body cache_control          > x-akr-cache-type / x-akr-cache-ttl

Body wins because it is the most specific statement of the caller (NAT writes it per request,
while headers are often fixed defaults of an SDK client or a proxy). A header is still validated
even when the body overrides it: a bad value is an error, never silently ignored.

Errors raise ``HintError(field, reason)`` with ``field`` the path the client sent, e.g.
``nvext.agent_hints.total_requests``, ``nvext.cache_control.ttl`` or ``header:x-akr-iat``.

Across the stock frontend (gateway -> processor)
------------------------------------------------
``prefix_id`` travels as header ``x-dynamo-session-id`` (arrives as
``agent_context.session_id``) *and* as an annotation. ``osl``, ``latency_sensitivity`` and
``priority`` stay in ``nvext.agent_hints`` (stock fields; they arrive as ``routing.*``).
Everything else travels in ``nvext.annotations``, the stock frontend's free-form string list,
one string per field, versioned::

    akr.v1.prefix_id=<prefix_id>     akr.v1.total_requests=<int>   akr.v1.iat_ms=<int>
    akr.v1.osl=<int>                 akr.v1.priority=<int>
    akr.v1.latency_sensitivity=<float repr>
    akr.v1.pin=<type>:<ttl seconds, float repr>      e.g. akr.v1.pin=ephemeral:3.0

Only fields that are set are written, in that order. ``osl``/``priority``/
``latency_sensitivity`` are written although they also ride in the stock ``agent_hints``, so the
processor reads one exact source instead of the frontend's renamed ``routing`` fields.

The key is the text between ``akr.v1.`` and the first ``=``; the value is everything after it
(``prefix_id`` may itself contain ``=``). The gateway removes any client-supplied ``akr.``
annotation before appending its own, so the namespace cannot be forged around validation.
``decode_annotations`` is total: it ignores foreign strings, unknown keys, other versions and
invalid values (each field falls back to ``None``) and never raises; the last valid value of a
key wins. ``hints_from_request`` combines annotations, ``routing`` and ``agent_context`` of a
preprocessed request the same total way.

Request id (not a hint)
-----------------------
The gateway names every completion request with the client's ``x-request-id`` when it is 1..128
characters of the prefix-id set, else with a new UUID4. The answer carries it back in
``x-request-id``, the gateway's trace record keeps it, and it travels to the processor as one
more annotation, ``akr.v1.request_id=<id>`` (``annotated_request_id`` reads it back, same
rule), for the processor's trace record. Why an annotation: Dynamo 1.6.1 hands a backend the
client's ``x-request-id`` only inside its trace context, which it builds only with its tracing
on (``DYN_LOGGING_JSONL``; off by default). Its own request id header, ``x-dynamo-request-id``,
takes UUIDs only, is deprecated (a warning per request), and two requests in flight with one
id both fail, so it must never carry a client's value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import msgspec

__all__ = [
    "ANNOTATION_PREFIX",
    "DEFAULT_PIN_TTL_S",
    "HEADER_CACHE_TTL",
    "HEADER_CACHE_TYPE",
    "HEADER_IAT",
    "HEADER_LATENCY_SENSITIVITY",
    "HEADER_OSL",
    "HEADER_PREFIX_ID",
    "HEADER_PRIORITY",
    "HEADER_TOTAL_REQUESTS",
    "HINT_HEADERS",
    "IAT_LEVELS_MS",
    "MAX_PIN_TTL_S",
    "OSL_LEVELS",
    "PIN_TYPES",
    "REQUEST_ID_HEADER",
    "SESSION_HEADER",
    "AgentHints",
    "HintError",
    "annotated_request_id",
    "check_prefix_id",
    "decode_annotations",
    "encode_annotations",
    "hints_from_request",
    "merge",
    "parse_agent_hints",
    "parse_header_hints",
    "parse_hints",
    "parse_ttl",
    "request_id_annotation",
    "strip_own",
    "valid_request_id",
]

OSL_LEVELS: dict[str, int] = {"LOW": 128, "MEDIUM": 512, "HIGH": 2048}
IAT_LEVELS_MS: dict[str, int] = {"LOW": 50, "MEDIUM": 250, "HIGH": 750}
PIN_TYPES: frozenset[str] = frozenset({"ephemeral"})
DEFAULT_PIN_TTL_S = 300.0
MAX_PIN_TTL_S = 86_400.0
MAX_PREFIX_ID_LEN = 256
MAX_REQUEST_ID_LEN = 128
MAX_TOTAL_REQUESTS = 1_000_000
MAX_OSL = 2**31 - 1
MAX_IAT_MS = 86_400_000
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

ANNOTATION_PREFIX = "akr.v1."
ANNOTATION_NAMESPACE = "akr."  # every version; the gateway strips client strings starting so

SESSION_HEADER = "x-dynamo-session-id"
REQUEST_ID_HEADER = "x-request-id"
HEADER_PREFIX_ID = "x-akr-prefix-id"
HEADER_TOTAL_REQUESTS = "x-akr-total-requests"
HEADER_OSL = "x-akr-osl"
HEADER_IAT = "x-akr-iat"
HEADER_LATENCY_SENSITIVITY = "x-akr-latency-sensitivity"
HEADER_PRIORITY = "x-akr-priority"
HEADER_CACHE_TTL = "x-akr-cache-ttl"
HEADER_CACHE_TYPE = "x-akr-cache-type"
HINT_HEADERS: tuple[str, ...] = (
    HEADER_PREFIX_ID,
    HEADER_TOTAL_REQUESTS,
    HEADER_OSL,
    HEADER_IAT,
    HEADER_LATENCY_SENSITIVITY,
    HEADER_PRIORITY,
    HEADER_CACHE_TTL,
    HEADER_CACHE_TYPE,
)

_SAFE_CHARS = r"A-Za-z0-9._:@/+=\-"  # prefix ids and request ids: no space, quote or control
_PREFIX_ID_RE = re.compile(rf"[{_SAFE_CHARS}]{{1,{MAX_PREFIX_ID_LEN}}}")
_REQUEST_ID_RE = re.compile(rf"[{_SAFE_CHARS}]{{1,{MAX_REQUEST_ID_LEN}}}")
_REQUEST_ID_KEY = f"{ANNOTATION_PREFIX}request_id="
_TTL_RE = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)(ms|s|m|h)?")
_TTL_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_INT_RE = re.compile(r"[+-]?\d{1,19}")
_FLOAT_RE = re.compile(r"[+-]?(?:\d{1,20}(?:\.\d{0,20})?|\.\d{1,20})(?:[eE][+-]?\d{1,3})?")


class AgentHints(msgspec.Struct, frozen=True, omit_defaults=True):
    """Validated hints of one request; ``None`` means the client did not say."""

    prefix_id: str | None = None
    total_requests: int | None = None
    osl: int | None = None
    iat_ms: int | None = None
    latency_sensitivity: float | None = None
    priority: int | None = None
    pin_type: str | None = None
    pin_ttl_s: float | None = None

    def is_empty(self) -> bool:
        return self == _EMPTY


_EMPTY = AgentHints()


class HintError(ValueError):
    """A hint the client sent is invalid; ``field`` is the path as the client sent it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[HintError], tuple[str, str]]:
        """Rebuilt from its own arguments, so it crosses a process pool intact."""
        return (HintError, (self.field, self.reason))


# --- scalar validators: return the clean value or raise HintError ---------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_prefix_id(v: object, field: str) -> str:
    """The prefix-id rule (also used for session headers): 1..256 chars of the safe set."""
    if not isinstance(v, str):
        raise HintError(field, "must be a string")
    if not _PREFIX_ID_RE.fullmatch(v):
        raise HintError(
            field, f"must be 1..{MAX_PREFIX_ID_LEN} characters of A-Z a-z 0-9 . _ : @ / + = -"
        )
    return v


def _check_int(v: object, field: str, lo: int, hi: int) -> int:
    if not _is_int(v):
        raise HintError(field, "must be an integer")
    assert isinstance(v, int)
    if not lo <= v <= hi:
        raise HintError(field, f"must be between {lo} and {hi}")
    return v


def _check_level(v: object, field: str, levels: Mapping[str, int], hi: int) -> int:
    if isinstance(v, str):
        level = levels.get(v.upper())
        if level is None:
            raise HintError(field, f"must be an integer >= 1 or one of {'/'.join(levels)}")
        return level
    if not _is_int(v):
        raise HintError(field, f"must be an integer >= 1 or one of {'/'.join(levels)}")
    return _check_int(v, field, 1, hi)


def _check_sensitivity(v: object, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise HintError(field, "must be a number")
    try:
        f = float(v)
    except OverflowError:
        raise HintError(field, "must be finite") from None
    if not math.isfinite(f):
        raise HintError(field, "must be finite")
    if f < 0:
        raise HintError(field, "must be >= 0")
    return f


def parse_ttl(ttl: object, field: str = "nvext.cache_control.ttl") -> float:
    """``"30s"``/``"5m"``/``"1h"``/``"250ms"`` (or a bare number of seconds) -> seconds.

    Accepts (0, MAX_PIN_TTL_S]; raises HintError otherwise.
    """
    if isinstance(ttl, bool):
        raise HintError(field, "must be a duration like '30s', '5m', '1h' or '250ms'")
    if _is_int(ttl) or isinstance(ttl, float):
        assert isinstance(ttl, (int, float))
        seconds = float(ttl) if not (_is_int(ttl) and abs(ttl) > 10**12) else math.inf
    elif isinstance(ttl, str):
        m = _TTL_RE.fullmatch(ttl.strip())
        if m is None:
            raise HintError(field, "must be a duration like '30s', '5m', '1h' or '250ms'")
        seconds = float(m.group(1)) * _TTL_UNITS[m.group(2)]
    else:
        raise HintError(field, "must be a duration like '30s', '5m', '1h' or '250ms'")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_PIN_TTL_S:
        raise HintError(field, f"must be > 0 and at most {MAX_PIN_TTL_S:g} s (24h)")
    return seconds


# --- body and headers -----------------------------------------------------------------------


def parse_agent_hints(
    agent_hints: object, cache_control: object, *, base: str = "nvext"
) -> AgentHints:
    """Validate body ``nvext.agent_hints`` and ``nvext.cache_control`` (either may be None).

    Unknown keys in ``agent_hints`` are ignored (see module docstring).
    """
    ah = f"{base}.agent_hints"
    out: dict[str, object] = {}
    if agent_hints is not None:
        if not isinstance(agent_hints, dict):
            raise HintError(ah, "must be an object")
        v = agent_hints.get("prefix_id")
        if v is not None:
            out["prefix_id"] = check_prefix_id(v, f"{ah}.prefix_id")
        v = agent_hints.get("total_requests")
        if v is not None:
            out["total_requests"] = _check_int(v, f"{ah}.total_requests", 1, MAX_TOTAL_REQUESTS)
        v = agent_hints.get("osl")
        if v is not None:
            out["osl"] = _check_level(v, f"{ah}.osl", OSL_LEVELS, MAX_OSL)
        v = agent_hints.get("iat")
        if v is not None:
            out["iat_ms"] = _check_level(v, f"{ah}.iat", IAT_LEVELS_MS, MAX_IAT_MS)
        v = agent_hints.get("latency_sensitivity")
        if v is not None:
            out["latency_sensitivity"] = _check_sensitivity(v, f"{ah}.latency_sensitivity")
        v = agent_hints.get("priority")
        if v is not None:
            out["priority"] = _check_int(v, f"{ah}.priority", INT32_MIN, INT32_MAX)
    if cache_control is not None:
        cc = f"{base}.cache_control"
        if not isinstance(cache_control, dict):
            raise HintError(cc, "must be an object")
        pin_type = cache_control.get("type")
        if not isinstance(pin_type, str) or pin_type not in PIN_TYPES:  # a list is unhashable
            raise HintError(f"{cc}.type", f"must be one of {sorted(PIN_TYPES)}")
        out["pin_type"] = pin_type
        ttl = cache_control.get("ttl")
        out["pin_ttl_s"] = DEFAULT_PIN_TTL_S if ttl is None else parse_ttl(ttl, f"{cc}.ttl")
    return AgentHints(**out) if out else _EMPTY  # type: ignore[arg-type]


def _header_int(v: str, field: str, lo: int, hi: int) -> int:
    s = v.strip()
    if not _INT_RE.fullmatch(s):
        raise HintError(field, "must be an integer")
    return _check_int(int(s), field, lo, hi)


def _header_level(v: str, field: str, levels: Mapping[str, int], hi: int) -> int:
    s = v.strip()
    if s.upper() in levels:
        return levels[s.upper()]
    if not _INT_RE.fullmatch(s):
        raise HintError(field, f"must be an integer >= 1 or one of {'/'.join(levels)}")
    return _check_int(int(s), field, 1, hi)


def parse_header_hints(headers: Mapping[str, str]) -> AgentHints:
    """Validate the ``x-akr-*`` hint headers (and ``x-dynamo-session-id`` as a prefix id).

    ``headers`` must look up case-insensitively (aiohttp's CIMultiDict does) or be lower-case.
    """
    out: dict[str, object] = {}
    # Both validated: the one that loses to x-akr-prefix-id is not ignored when it is bad.
    v = headers.get(SESSION_HEADER)
    if v is not None:
        out["prefix_id"] = check_prefix_id(v.strip(), f"header:{SESSION_HEADER}")
    v = headers.get(HEADER_PREFIX_ID)
    if v is not None:
        out["prefix_id"] = check_prefix_id(v.strip(), f"header:{HEADER_PREFIX_ID}")
    v = headers.get(HEADER_TOTAL_REQUESTS)
    if v is not None:
        out["total_requests"] = _header_int(
            v, f"header:{HEADER_TOTAL_REQUESTS}", 1, MAX_TOTAL_REQUESTS
        )
    v = headers.get(HEADER_OSL)
    if v is not None:
        out["osl"] = _header_level(v, f"header:{HEADER_OSL}", OSL_LEVELS, MAX_OSL)
    v = headers.get(HEADER_IAT)
    if v is not None:
        out["iat_ms"] = _header_level(v, f"header:{HEADER_IAT}", IAT_LEVELS_MS, MAX_IAT_MS)
    v = headers.get(HEADER_LATENCY_SENSITIVITY)
    if v is not None:
        field = f"header:{HEADER_LATENCY_SENSITIVITY}"
        s = v.strip()
        if not _FLOAT_RE.fullmatch(s):
            raise HintError(field, "must be a number")
        out["latency_sensitivity"] = _check_sensitivity(float(s), field)
    v = headers.get(HEADER_PRIORITY)
    if v is not None:
        out["priority"] = _header_int(v, f"header:{HEADER_PRIORITY}", INT32_MIN, INT32_MAX)
    pin_type = headers.get(HEADER_CACHE_TYPE)
    ttl = headers.get(HEADER_CACHE_TTL)
    if pin_type is not None or ttl is not None:
        if pin_type is not None and pin_type.strip() not in PIN_TYPES:
            raise HintError(f"header:{HEADER_CACHE_TYPE}", f"must be one of {sorted(PIN_TYPES)}")
        out["pin_type"] = "ephemeral"
        out["pin_ttl_s"] = (
            DEFAULT_PIN_TTL_S if ttl is None else parse_ttl(ttl, f"header:{HEADER_CACHE_TTL}")
        )
    return AgentHints(**out) if out else _EMPTY  # type: ignore[arg-type]


def merge(high: AgentHints, low: AgentHints) -> AgentHints:
    """Per-field merge: a field of ``high`` wins unless it is None. The pin moves as a pair."""
    if low.is_empty():
        return high
    if high.is_empty():
        return low
    fields = {f: getattr(high, f) for f in high.__struct_fields__}
    for f in fields:
        if fields[f] is None and f not in ("pin_type", "pin_ttl_s"):
            fields[f] = getattr(low, f)
    if high.pin_type is None:
        fields["pin_type"], fields["pin_ttl_s"] = low.pin_type, low.pin_ttl_s
    return AgentHints(**fields)  # type: ignore[arg-type]


def parse_hints(
    agent_hints: object, cache_control: object, headers: Mapping[str, str] | None
) -> AgentHints:
    """Body and headers with the documented precedence (body over headers, per field)."""
    body = parse_agent_hints(agent_hints, cache_control)
    if not headers:
        return body
    return merge(body, parse_header_hints(headers))


# --- annotations ----------------------------------------------------------------------------

_ANNOTATED = ("prefix_id", "total_requests", "iat_ms", "osl", "priority", "latency_sensitivity")


def encode_annotations(h: AgentHints) -> list[str]:
    """Annotations for ``nvext.annotations`` (see module docstring for the format)."""
    out: list[str] = []
    for name in _ANNOTATED:
        v = getattr(h, name)
        if v is not None:
            out.append(f"{ANNOTATION_PREFIX}{name}={v}")
    if h.pin_type is not None:
        ttl = h.pin_ttl_s if h.pin_ttl_s is not None else DEFAULT_PIN_TTL_S
        out.append(f"{ANNOTATION_PREFIX}pin={h.pin_type}:{float(ttl)}")
    return out


def _dec_int(s: str, lo: int, hi: int) -> int | None:
    if not _INT_RE.fullmatch(s):
        return None
    v = int(s)
    return v if lo <= v <= hi else None


def _dec_float(s: str) -> float | None:
    if not _FLOAT_RE.fullmatch(s):
        return None
    f = float(s)
    return f if math.isfinite(f) and f >= 0 else None


def _dec_pin(s: str) -> tuple[str, float] | None:
    kind, _, ttl = s.partition(":")
    if kind not in PIN_TYPES:
        return None
    f = _dec_float(ttl) if ttl else DEFAULT_PIN_TTL_S
    if f is None or f <= 0 or f > MAX_PIN_TTL_S:
        return None
    return kind, f


def decode_annotations(annotations: object) -> AgentHints:
    """Inverse of ``encode_annotations``; total (never raises, ignores anything foreign)."""
    if not isinstance(annotations, (list, tuple)):
        return _EMPTY
    out: dict[str, object] = {}
    plen = len(ANNOTATION_PREFIX)
    for a in annotations:
        if not isinstance(a, str) or not a.startswith(ANNOTATION_PREFIX):
            continue
        key, sep, val = a[plen:].partition("=")
        if not sep:
            continue
        v: object
        if key == "prefix_id":
            v = val if _PREFIX_ID_RE.fullmatch(val) else None
        elif key == "total_requests":
            v = _dec_int(val, 1, MAX_TOTAL_REQUESTS)
        elif key == "iat_ms":
            v = _dec_int(val, 1, MAX_IAT_MS)
        elif key == "osl":
            v = _dec_int(val, 1, MAX_OSL)
        elif key == "priority":
            v = _dec_int(val, INT32_MIN, INT32_MAX)
        elif key == "latency_sensitivity":
            v = _dec_float(val)
        elif key == "pin":
            pin = _dec_pin(val)
            if pin is not None:
                out["pin_type"], out["pin_ttl_s"] = pin
            continue
        else:
            continue
        if v is not None:
            out[key] = v
    return AgentHints(**out) if out else _EMPTY  # type: ignore[arg-type]


def _get(d: object, key: str) -> object:
    return d.get(key) if isinstance(d, dict) else None


def hints_from_request(request: object) -> AgentHints:
    """Hints of a preprocessed request as the processor receives it; total, never raises.

    Annotations first, then the stock carriers fill the gaps: ``agent_context.session_id``
    (prefix id), ``routing.expected_output_tokens`` (osl), ``routing.priority`` (priority).
    """
    h = decode_annotations(_get(request, "annotations"))
    fill: dict[str, object] = {}
    if h.prefix_id is None:
        sid = _get(_get(request, "agent_context"), "session_id")
        if isinstance(sid, str) and _PREFIX_ID_RE.fullmatch(sid):
            fill["prefix_id"] = sid
    routing = _get(request, "routing")
    if h.osl is None:
        osl = _get(routing, "expected_output_tokens")
        if _is_int(osl) and 1 <= osl <= MAX_OSL:  # type: ignore[operator]
            fill["osl"] = osl
    if h.priority is None:
        prio = _get(routing, "priority")
        if _is_int(prio) and INT32_MIN <= prio <= INT32_MAX:  # type: ignore[operator]
            fill["priority"] = prio
    return merge(h, AgentHints(**fill)) if fill else h  # type: ignore[arg-type]


def valid_request_id(v: str) -> bool:
    """Whether ``v`` may name a request: 1..128 characters of the prefix-id set (safe in a
    response header, a log line and a JSON string as it is)."""
    return _REQUEST_ID_RE.fullmatch(v) is not None


def request_id_annotation(request_id: str) -> str:
    """The annotation that carries a (valid) request id to the processor."""
    return _REQUEST_ID_KEY + request_id


def annotated_request_id(annotations: object) -> str | None:
    """The request id the gateway annotated, or None (none, or not a valid one); total."""
    if not isinstance(annotations, (list, tuple)):
        return None
    found = None
    for a in annotations:
        if isinstance(a, str) and a.startswith(_REQUEST_ID_KEY):
            v = a[len(_REQUEST_ID_KEY) :]
            found = v if valid_request_id(v) else found
    return found


def strip_own(annotations: Iterable[object]) -> list[object]:
    """Annotations without any ``akr.`` ones (the gateway's anti-forgery filter)."""
    return [
        a for a in annotations if not (isinstance(a, str) and a.startswith(ANNOTATION_NAMESPACE))
    ]
