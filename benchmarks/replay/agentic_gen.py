"""A seeded generator of agentic traces, and its presets.

Why: routing for agents is decided by cache pressure during tool calls. A session is an agent
of one type (its system prompt, shared by every session of the type, is the leading hash
blocks), a first user message, then turns: each turn's output and a tool result grow the
context, and the next turn waits for the answer plus a tool-call gap drawn around the
session's iat. The client's hints (NAT: prefix_id, total_requests, iat, osl,
latency_sensitivity, cache_control on some sessions) ride on every request.

Sizing (``pressure_params``): sessions arrive as a Poisson process whose rate makes the live
sessions' distinct context ``pressure`` x the cluster's KV (Little's law over the planned
schedule, service time not counted: a lower bound), and the mean output length is chosen so
that the modelled engine load (``agentic_load``) is ``load`` at mocker speed ``speed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from benchmarks.replay.agentic_load import (
    ASSUMED_REUSE,
    ENGINE_BLOCK,
    KNEE,
    live_context_tokens,
    modelled_load,
    request_cost_ms,
)
from benchmarks.replay.trace import TraceRequest
from router.hints import MAX_IAT_MS, MAX_PIN_TTL_S, AgentHints


@dataclass(frozen=True, slots=True)
class AgenticParams:
    """The workload's shape. Ranges are inclusive (lo, hi); token counts are prompt tokens."""

    duration_s: float = 600.0  # the window (stationary) or when sessions start
    session_rate_per_s: float = 1.0  # Poisson rate of new sessions
    num_sessions: int | None = None  # instead: exactly this many, uniform over the window
    num_agent_types: int = 6
    system_prompt_blocks: tuple[int, int] = (2, 8)  # per agent type, in hash blocks
    user_tokens: tuple[int, int] = (256, 2048)  # the first user message
    turns: tuple[int, int] = (4, 16)  # requests per session (fewer if the context fills)
    tool_tokens_median: float = 600.0  # tool result per turn: lognormal
    tool_tokens_sigma: float = 0.8
    tool_tokens_max: int = 4096
    osl_median: float = 200.0  # a session's mean output length: lognormal around this
    osl_sigma: float = 0.4
    osl_range: tuple[int, int] = (8, 2048)
    turn_osl_sigma: float = 0.3  # one turn's output around its session's mean
    iat_ms: tuple[float, float] = (1000.0, 10000.0)  # a session's iat: uniform
    gap_sigma: float = 0.3  # one tool gap: iat x lognormal(0, gap_sigma), clipped to iat_ms
    max_context_tokens: int = 32768
    pin_fraction: float = 0.5  # sessions sending cache_control (ttl = total_requests x iat)
    latency_sensitivities: tuple[float, ...] = (0.5, 1.0, 2.0)  # by agent type, cycled
    hash_block: int = 512
    stationary: bool = True  # sessions already running at 0 (see generate_agentic)
    # The client's hints against what the session does (the requests are the same either way):
    hint_error_sigma: float = 0.0  # per session: iat, osl, total_requests x lognormal(0, this)
    hinted: bool = True  # False: no hints at all (no prefix_id; conversations by lineage)


@dataclass(frozen=True, slots=True)
class Preset:
    """A generated workload's parameters and the cluster it was sized for."""

    name: str
    seed: int
    params: AgenticParams
    workers: int
    num_gpu_blocks: int  # per worker, of ENGINE_BLOCK tokens
    pressure: float  # planned live distinct context / cluster KV (mean; the demo: peak)
    speed: float  # mocker speedup_ratio the load was sized for
    decode_speedup: float  # mocker decode_speedup_ratio the load was sized for
    load: float  # modelled engine load at that speed (agentic_load)
    expected_sessions: float
    expected_requests: float


# --- generation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Session:
    start_ms: float
    agent: int
    turns: list[tuple[int, int]]  # (input_length, output_length)
    gaps_ms: list[float]  # tool gap after turn k (len(turns) - 1)
    ids: list[int]  # the session's own hash ids (after the system prompt), as many as needed
    osl: int
    iat_ms: float
    pinned: bool


def _agent_prompts(seed: int, p: AgenticParams) -> list[int]:
    """Blocks of each agent type's system prompt."""
    rng = np.random.default_rng([seed, 0])
    lo, hi = p.system_prompt_blocks
    return [int(b) for b in rng.integers(lo, hi + 1, size=p.num_agent_types)]


def _clip(x: float, lo: float, hi: float) -> float:
    """``np.clip`` of one number without its array machinery (most of the generator's time)."""
    return min(max(x, lo), hi)


def _session_turns(
    rng: np.random.Generator, p: AgenticParams, system_tokens: int
) -> tuple[list[tuple[int, int]], list[float], int, float, bool]:
    lo, hi = p.osl_range
    osl = int(_clip(round(p.osl_median * rng.lognormal(0.0, p.osl_sigma)), lo, hi))
    iat = float(round(rng.uniform(*p.iat_ms)))
    pinned = bool(rng.random() < p.pin_fraction)
    n = int(rng.integers(p.turns[0], p.turns[1] + 1))
    ctx = system_tokens + int(rng.integers(p.user_tokens[0], p.user_tokens[1] + 1))
    turns: list[tuple[int, int]] = []
    gaps: list[float] = []
    for k in range(n):
        out = int(_clip(round(osl * rng.lognormal(0.0, p.turn_osl_sigma)), 1, hi))
        tool = int(
            _clip(
                round(p.tool_tokens_median * rng.lognormal(0.0, p.tool_tokens_sigma)),
                1,
                p.tool_tokens_max,
            )
        )
        gap = float(_clip(iat * rng.lognormal(0.0, p.gap_sigma), *p.iat_ms))
        out = min(out, p.max_context_tokens - ctx)
        if out < 1:
            break
        turns.append((ctx, out))
        nxt = ctx + out + tool
        if k == n - 1 or nxt + lo > p.max_context_tokens:
            break
        gaps.append(round(gap, 3))
        ctx = nxt
    return turns, gaps, osl, iat, pinned


def _sessions(
    seed: int, p: AgenticParams, prompts: Sequence[int], count: int | None = None
) -> list[_Session]:
    """Sessions in start order. Starts are Poisson over [-preroll, duration): sessions already
    running at 0 make the trace stationary from its first request (their turns before 0 are
    dropped by the caller). ``count`` instead gives a pilot sample of ``count`` sessions."""
    if count is None and p.num_sessions is not None:
        uniform = np.random.default_rng([seed, 1]).uniform(
            0.0, p.duration_s * 1000.0, p.num_sessions
        )
        starts = [round(float(t), 3) for t in np.sort(uniform)]
    elif count is None:
        starts = []
        arrivals = np.random.default_rng([seed, 1])
        mean_ms = 1000.0 / p.session_rate_per_s
        t = (-_preroll_ms(p) if p.stationary else 0.0) + arrivals.exponential(mean_ms)
        while t < p.duration_s * 1000.0:
            starts.append(round(float(t), 3))
            t += arrivals.exponential(mean_ms)
    else:
        starts = [0.0] * count
    next_id = sum(prompts)
    out: list[_Session] = []
    for s, start in enumerate(starts):
        rng = np.random.default_rng([seed, 2, s])
        agent = int(rng.integers(p.num_agent_types))
        system = prompts[agent] * p.hash_block
        turns, gaps, osl, iat, pinned = _session_turns(rng, p, system)
        if not turns:
            raise ValueError(
                f"max_context_tokens {p.max_context_tokens} leaves no room for a first turn "
                f"after a {system}-token system prompt and the user message"
            )
        need = -(-(turns[-1][0] - system) // p.hash_block)
        ids = list(range(next_id, next_id + need))
        out.append(_Session(start, agent, turns, gaps, ids, osl, iat, pinned))
        next_id += need
    return out


def _preroll_ms(p: AgenticParams) -> float:
    """The longest a session's planned schedule can last: sessions started this long before 0
    may still have turns in the trace."""
    return (p.turns[1] - 1) * p.iat_ms[1]


def _hints(seed: int, p: AgenticParams, s: int, sid: str, sess: _Session, count: int) -> AgentHints:
    """What session ``s``'s client says: its real iat, output length and turns, each off by
    its own factor lognormal(0, ``hint_error_sigma``) (drawn from a stream of their own, so
    the requests do not change with the error), within the ranges a client may send. A pin's
    ttl is the client's turns x iat."""
    err = np.random.default_rng([seed, 3, s]).lognormal(0.0, p.hint_error_sigma, 3)
    iat = int(_clip(round(sess.iat_ms * err[0]), 1, MAX_IAT_MS))  # whole milliseconds
    osl = int(_clip(round(sess.osl * err[1]), *p.osl_range))
    total = max(1, round(count * err[2]))
    ttl = float(_clip(math.ceil(total * iat / 1000.0), 1, MAX_PIN_TTL_S)) if sess.pinned else None
    return AgentHints(
        prefix_id=sid,
        total_requests=total,
        osl=osl,
        iat_ms=iat,
        latency_sensitivity=p.latency_sensitivities[sess.agent % len(p.latency_sensitivities)],
        pin_type=None if ttl is None else "ephemeral",
        pin_ttl_s=ttl,
    )


def generate_agentic(seed: int, params: AgenticParams) -> list[TraceRequest]:
    """The trace: requests in planned arrival order over [0, duration). Turn k+1 of a session
    has turn k as ``parent`` and the tool gap as ``delay_ms``; its ``arrival_ms`` is the
    planned time (the parent's planned arrival + the gap), a lower bound on its real arrival.
    With ``stationary`` the window is: sessions that started before 0 enter at their first
    turn at or after 0 (as a root), turns planned after the end are cut, and the hints count
    only the turns in the trace (``total_requests``; the pin's ttl = turns x iat, NAT's rule).
    Without it, sessions start in [0, duration) and run to their last turn."""
    p = params
    prompts = _agent_prompts(seed, p)
    firsts = np.cumsum([0, *prompts])
    end_ms = p.duration_s * 1000.0 if p.stationary else math.inf
    rows: list[tuple[float, int, int, TraceRequest]] = []
    for s, sess in enumerate(_sessions(seed, p, prompts)):
        shared = tuple(range(int(firsts[sess.agent]), int(firsts[sess.agent + 1])))
        system = len(shared) * p.hash_block
        times = np.round(sess.start_ms + np.cumsum([0.0, *sess.gaps_ms]), 3)
        first = int(np.searchsorted(times, 0.0))
        last = int(np.searchsorted(times, end_ms))
        if first >= last:
            continue
        count = last - first
        sid = f"agent{sess.agent}-s{s:06d}"
        hints = _hints(seed, p, s, sid, sess, count) if p.hinted else None
        for k in range(first, last):
            isl, osl = sess.turns[k]
            req = TraceRequest(
                index=-1,
                arrival_ms=float(times[k]),
                input_length=isl,
                output_length=osl,
                hash_ids=shared + tuple(sess.ids[: -(-(isl - system) // p.hash_block)]),
                hash_block=p.hash_block,
                hints=hints,
                session_id=sid,
                parent=k - 1 if k > first else None,  # a turn number here; an index below
                delay_ms=sess.gaps_ms[k - 1] if k > first else 0.0,
            )
            rows.append((req.arrival_ms, s, k, req))
    rows.sort(key=lambda r: r[:3])
    index = {(s, k): i for i, (_, s, k, _) in enumerate(rows)}
    t0 = rows[0][0] if rows else 0.0  # the first request at 0, as Dynamo's replay shifts it
    return [
        replace(
            req,
            index=i,
            arrival_ms=round(req.arrival_ms - t0, 3),
            parent=None if req.parent is None else index[(s, req.parent)],
        )
        for i, (_, s, _, req) in enumerate(rows)
    ]


# --- presets --------------------------------------------------------------------------------

_PILOT = 1000  # sessions used to size a preset


@dataclass(frozen=True, slots=True)
class _Sizing:
    session_rate: float  # per s
    request_rate: float  # per s
    load: float  # modelled, per worker


def _size(
    seed: int,
    p: AgenticParams,
    workers: int,
    blocks: int,
    pressure: float,
    speed: float,
    reuse: float,
    decode_speedup: float,
) -> _Sizing:
    """Rates and load for this shape and cluster, from a pilot sample of sessions: per
    session, its own context x the time it waits in tool calls (Little's law turns that into
    live context), its requests, and their engine time."""
    prompts = _agent_prompts(seed, p)
    kv = blocks * ENGINE_BLOCK
    ctx_time = reqs = cost = 0.0
    for sess in _sessions(seed, p, prompts, count=_PILOT):
        system = prompts[sess.agent] * p.hash_block
        for k, (isl, osl) in enumerate(sess.turns):
            if k < len(sess.gaps_ms):
                ctx_time += (isl - system) * sess.gaps_ms[k]
            cost += request_cost_ms(isl, osl, kv, reuse, speed, decode_speedup)
        reqs += len(sess.turns)
    live_target = pressure * workers * kv - sum(prompts) * p.hash_block
    if live_target <= 0:
        raise ValueError("the cluster's KV is smaller than the agents' system prompts")
    rate = live_target / (ctx_time / _PILOT) * 1000.0
    load = rate * cost / _PILOT / 1000.0 / workers / KNEE
    return _Sizing(rate, rate * reqs / _PILOT, load)


def fit_context(p: AgenticParams, max_context_tokens: int) -> AgenticParams:
    """``p`` with its largest prompt capped at ``max_context_tokens``; when that is below
    ``p``'s cap, every prompt size (system prompt, user message, tool results) shrinks by the
    same factor, so sessions keep their number of turns instead of ending at the cap."""
    if max_context_tokens >= p.max_context_tokens:
        return p
    f = max_context_tokens / p.max_context_tokens
    lo, hi = p.system_prompt_blocks
    return replace(
        p,
        max_context_tokens=max_context_tokens,
        system_prompt_blocks=(max(1, round(lo * f)), max(1, round(hi * f))),
        user_tokens=(max(1, round(p.user_tokens[0] * f)), max(1, round(p.user_tokens[1] * f))),
        tool_tokens_median=p.tool_tokens_median * f,
        tool_tokens_max=max(1, round(p.tool_tokens_max * f)),
    )


def pressure_params(
    workers: int,
    seed: int,
    num_gpu_blocks: int = 1024,
    pressure: float = 1.5,
    *,
    load: float = 0.5,
    speed: float = 1.0,
    decode_speedup: float = 1.0,
    reuse: float = ASSUMED_REUSE,
    max_requests: int = 15_000,
    duration_s: float = 600.0,
    base: AgenticParams | None = None,
) -> Preset:
    """A workload whose live sessions hold ``pressure`` x the cluster's KV (``workers`` x
    ``num_gpu_blocks`` blocks of 64 tokens) at a modelled ``load`` (1.0 = the knee where
    Dynamo's replay starts to queue, ``agentic_load``) on mockers with ``speedup_ratio``
    ``speed`` and ``decode_speedup_ratio`` ``decode_speedup``, if ``reuse`` of each prompt is
    cached. The session rate follows from the pressure, the mean output length from the load;
    the largest prompt is capped at half a worker's KV; ``duration_s`` is shortened so that
    the trace expects at most ``max_requests``. Raises ValueError when no mean output in
    ``osl_range`` gives that load: prefill of the misses grows with the blocks per worker
    and the pressure, decode with the pressure and the output (not with the blocks)."""
    p = fit_context(base or AgenticParams(), num_gpu_blocks * ENGINE_BLOCK // 2)

    def size(osl: float) -> _Sizing:
        q = replace(p, osl_median=osl)
        return _size(seed, q, workers, num_gpu_blocks, pressure, speed, reuse, decode_speedup)

    lo, hi = float(p.osl_range[0]), float(p.osl_range[1])
    f_lo, f_hi = size(lo).load - load, size(hi).load - load
    if f_lo > 0 or f_hi < 0:
        raise ValueError(
            f"load {load} at speed {speed}, pressure {pressure}, {num_gpu_blocks} blocks per "
            f"worker: the modelled load is {f_lo + load:.2f} to {f_hi + load:.2f} for mean "
            f"outputs of {lo:g} to {hi:g} tokens; lower the pressure or the blocks per worker"
        )
    osl = lo
    for _ in range(40):  # regula falsi (Illinois): the load grows smoothly with the output
        osl = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        f = size(osl).load - load
        if abs(f) < 0.002 * load:
            break
        if f > 0:
            hi, f_hi = osl, f
            f_lo /= 2
        else:
            lo, f_lo = osl, f
            f_hi /= 2
    p = replace(p, osl_median=round(osl, 2))
    sized = _size(seed, p, workers, num_gpu_blocks, pressure, speed, reuse, decode_speedup)
    duration = round(min(duration_s, max_requests / sized.request_rate), 1)
    p = replace(p, session_rate_per_s=round(sized.session_rate, 6), duration_s=duration)
    return Preset(
        name="pressure",
        seed=seed,
        params=p,
        workers=workers,
        num_gpu_blocks=num_gpu_blocks,
        pressure=pressure,
        speed=speed,
        decode_speedup=decode_speedup,
        load=round(sized.load, 4),
        expected_sessions=sized.session_rate * duration,
        expected_requests=sized.request_rate * duration,
    )


def demo_preset(seed: int) -> Preset:
    """24 sessions (~90 requests) for a short demo at 8 workers under KV pressure: the
    sessions start within 3 s, so they are live together, and each worker has 128 blocks
    (8,192 tokens): the largest prompt (7,680 tokens) fits one worker while the live
    sessions' contexts exceed the cluster's 65,536 tokens (``pressure`` is the peak of
    ``live_context_tokens`` over the cluster's KV, 1.36-1.6 for seeds 0-19)."""
    p = AgenticParams(
        duration_s=3.0,
        num_sessions=24,
        num_agent_types=3,
        system_prompt_blocks=(1, 2),
        user_tokens=(3072, 4096),
        turns=(3, 5),
        tool_tokens_median=600.0,
        tool_tokens_max=1024,
        osl_median=40.0,
        max_context_tokens=7680,
        stationary=False,
    )
    workers, blocks = 8, 128
    requests = generate_agentic(seed, p)
    live = live_context_tokens(requests, step_ms=500.0)
    return Preset(
        name="demo",
        seed=seed,
        params=p,
        workers=workers,
        num_gpu_blocks=blocks,
        pressure=round(float(live.max()) / (workers * blocks * ENGINE_BLOCK), 3),
        speed=1.0,
        decode_speedup=1.0,
        load=round(modelled_load(requests, workers, blocks), 4),
        expected_sessions=float(p.num_sessions or 0),
        expected_requests=float(len(requests)),
    )
