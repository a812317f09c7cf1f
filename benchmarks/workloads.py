"""Seeded workloads for the routing benchmark (``benchmarks/routing.py``).

A workload is a list of :class:`Session` objects; a session is a list of :class:`Turn` s sent
one after the other (the next turn leaves ``gap_s`` after the previous answer finished, like an
agent waiting for a tool), starting at ``start_s`` after the run began. The Mooncake replay is
one single-turn session per trace line, started at its (scaled) timestamp: open loop.

Every prompt is plain text built from 54 words of the tiny model's vocabulary that are each ONE
token with a leading space (`` cache``, `` token``, ...), so a text of n words is n tokens and
concatenated texts tokenize as the concatenation of their tokens. That makes the workload's token
structure known in advance without running the server:

* equal text -> equal tokens -> equal KV blocks (Mooncake: one 64-token block of text per
  ``hash_id``, deterministic in the id);
* the **ideal hit ratio** is computed here from the exact token ids the stock frontend will see
  (the model's chat template rendered with jinja2, tokenized with its ``tokenizer.json``): per
  request, the number of full 64-token blocks of its prompt that equal the leading blocks of an
  EARLIER request's prompt (longest prefix shared with any earlier request, block-aligned, as a
  prefix cache with infinite capacity on one worker would hit), summed over requests and divided
  by the summed prompt tokens. It does not depend on the arm.

The assistant turns inside a conversation's history are synthetic text of the turn's ``max_tokens``
length, not the model's real answer, so every arm receives byte-identical prompts (an agent would
send the real answer back; with simulated workers the answer is random tokens anyway).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from array import array
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmarks.replay.trace import MOONCAKE_HASH_BLOCK, mooncake_trace

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO_ROOT / ".model" / "akr-tiny"
BLOCK_SIZE = 64


# ----------------------------------------------------------------------------- data model
@dataclass
class Turn:
    messages: list[dict[str, str]]
    max_tokens: int
    gap_s: float = 0.0  # wait after the previous turn of the session finished
    hints: dict[str, Any] | None = None  # nvext.agent_hints (our arm); None = no hints
    cache_ttl: str | None = None  # nvext.cache_control.ttl (our arm)
    # filled by annotate_ideal():
    prompt_tokens: int = 0
    ideal_cached_tokens: int = 0


@dataclass
class Session:
    session_id: str
    start_s: float
    turns: list[Turn]
    klass: str = "agent"
    send_session_header: bool = True  # x-dynamo-session-id for the affinity arm


@dataclass
class Workload:
    name: str
    sessions: list[Session]
    description: str
    # cluster the workload runs on
    speeds: list[float]
    gpu_blocks: int
    scaling: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)

    def ideal_hit_ratio(self) -> float:
        prompt = sum(t.prompt_tokens for s in self.sessions for t in s.turns)
        ideal = sum(t.ideal_cached_tokens for s in self.sessions for t in s.turns)
        return ideal / prompt if prompt else 0.0


# ----------------------------------------------------------------------------- text
@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))


@lru_cache(maxsize=1)
def _chat_template() -> Any:
    import jinja2

    cfg = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    return jinja2.Environment().from_string(cfg["chat_template"])


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    """Words that are exactly one token with a leading space (checked by round trip)."""
    tok = _tokenizer()
    vocab = tok.get_vocab()
    out = []
    for piece, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece.startswith("\u0120") and piece[1:].isalpha() and len(piece) > 2:
            if tok.encode(" " + piece[1:]).ids == [idx]:
                out.append(piece[1:])
    if len(out) < 16:
        raise RuntimeError(f"tiny model vocabulary has only {len(out)} one-token words")
    return tuple(out)


def text(rng: random.Random, n_tokens: int) -> str:
    """n_tokens one-token words (each with its leading space)."""
    w = words()
    return "".join(" " + w[rng.randrange(len(w))] for _ in range(max(0, n_tokens)))


def seeded_rng(*parts: object) -> random.Random:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def prompt_token_ids(messages: list[dict[str, str]]) -> list[int]:
    rendered = _chat_template().render(messages=messages, add_generation_prompt=True)
    return _tokenizer().encode(rendered).ids


def annotate_ideal(sessions: list[Session]) -> None:
    """Set prompt_tokens and ideal_cached_tokens of every turn (order: planned send time).

    Sessions are closed loop, so the exact interleaving depends on latencies; the order used
    is each turn's earliest possible send time (start + previous gaps), which is what a cache
    with infinite capacity would see up to ties. The ideal counts only blocks of EARLIER
    prompts (an answer's own tokens never reappear: histories carry synthetic answers).
    """
    planned: list[tuple[float, int, int, Turn]] = []
    for si, s in enumerate(sessions):
        t = s.start_s
        for ti, turn in enumerate(s.turns):
            t += turn.gap_s if ti else 0.0
            planned.append((t, si, ti, turn))
            t += 1e-3  # the turn itself takes time; keeps session order
    planned.sort(key=lambda x: (x[0], x[1], x[2]))
    template = _chat_template()
    rendered = [
        template.render(messages=t.messages, add_generation_prompt=True) for _, _, _, t in planned
    ]
    encoded = _tokenizer().encode_batch(rendered)
    seen: set[bytes] = set()
    for (_, _, _, turn), enc in zip(planned, encoded, strict=True):
        ids = enc.ids
        turn.prompt_tokens = len(ids)
        raw = array("I", ids).tobytes()
        h = hashlib.blake2b(digest_size=16)
        chain: list[bytes] = []
        step = BLOCK_SIZE * 4
        for b in range(len(ids) // BLOCK_SIZE):
            h.update(raw[b * step : (b + 1) * step])
            chain.append(h.copy().digest())
        hit = 0
        for d in chain:
            if d in seen:
                hit += 1
            else:
                break
        turn.ideal_cached_tokens = hit * BLOCK_SIZE
        seen.update(chain)


# ----------------------------------------------------------------------------- agentic
@dataclass
class AgenticParams:
    sessions: int = 24
    arrival_window_s: float = 30.0
    agent_types: int = 3
    system_tokens: tuple[int, int] = (1500, 3500)
    task_tokens: tuple[int, int] = (100, 300)
    turns: tuple[int, int] = (4, 10)
    tool_tokens: tuple[int, int] = (200, 700)
    osl: tuple[int, int] = (16, 48)
    iat_ms: tuple[int, ...] = (250, 500, 1000, 2000)
    gap_sigma: float = 0.4  # lognormal spread of a tool-call gap around the session's iat
    latency_sensitivity: float = 1.0
    priority: int = 1
    klass: str = "agent"
    id_prefix: str = "agent"
    gap_clip_s: tuple[float, float] | None = None  # tool gaps clipped into [lo, hi] seconds


def agentic_sessions(seed: int, p: AgenticParams) -> list[Session]:
    rng = seeded_rng("agentic", seed, p.id_prefix)
    systems = [
        f"You are agent type {k}."
        + text(seeded_rng("system", seed, p.id_prefix, k), rng.randint(*p.system_tokens))
        for k in range(p.agent_types)
    ]
    sessions = []
    for i in range(p.sessions):
        srng = seeded_rng("session", seed, p.id_prefix, i)
        sid = f"{p.id_prefix}-{seed}-{i}"
        start = rng.uniform(0.0, p.arrival_window_s)
        n_turns = srng.randint(*p.turns)
        iat = srng.choice(p.iat_ms)
        osl = srng.randint(*p.osl)
        messages = [
            {"role": "system", "content": systems[srng.randrange(len(systems))]},
            {"role": "user", "content": f"Task {sid}:" + text(srng, srng.randint(*p.task_tokens))},
        ]
        ttl_s = max(1, math.ceil(n_turns * iat / 1000))
        turns = []
        for t in range(n_turns):
            gap = 0.0 if t == 0 else iat / 1000 * math.exp(srng.gauss(0.0, p.gap_sigma))
            if t and p.gap_clip_s is not None:
                gap = min(max(gap, p.gap_clip_s[0]), p.gap_clip_s[1])
            turns.append(
                Turn(
                    messages=[dict(m) for m in messages],
                    max_tokens=osl,
                    gap_s=gap,
                    hints={
                        "prefix_id": sid,
                        "total_requests": n_turns,
                        "iat": iat,
                        "osl": osl,
                        "latency_sensitivity": p.latency_sensitivity,
                        "priority": p.priority,
                    },
                    cache_ttl=f"{ttl_s}s",
                )
            )
            messages.append({"role": "assistant", "content": text(srng, osl)})
            messages.append(
                {
                    "role": "user",
                    "content": f"tool result {t}:" + text(srng, srng.randint(*p.tool_tokens)),
                }
            )
        sessions.append(Session(sid, start, turns, klass=p.klass))
    return sessions


# ----------------------------------------------------------------------------- mooncake
@dataclass
class MooncakeParams:
    # Keep one conversation in `sample_every` (a conversation = the requests sharing the
    # trace's second hash id; single-block prompts are always kept), over the whole hour, so
    # follow-up turns keep their shared prefixes while the rate fits this machine.
    sample_every: int = 16
    time_scale: float = 1 / 30  # replay time = trace time x time_scale
    token_scale: float = BLOCK_SIZE / MOONCAKE_HASH_BLOCK  # 1/8: one hash id = one 64-token block
    max_output: int = 64
    max_requests: int | None = None


def mooncake_rows(p: MooncakeParams, path: Path | None = None) -> list[dict[str, Any]]:
    rows = []
    with open(mooncake_trace(path)) as f:
        for line in f:
            r = json.loads(line)
            ids = r["hash_ids"]
            if len(ids) < 2 or ids[1] % p.sample_every == 0:
                rows.append(r)
            if p.max_requests is not None and len(rows) >= p.max_requests:
                break
    t0 = rows[0]["timestamp"]
    out = []
    for r in rows:
        out.append(
            {
                "timestamp": round((r["timestamp"] - t0) * p.time_scale),
                "input_length": _scaled_length(
                    r["input_length"], len(r["hash_ids"]), p.token_scale
                ),
                "output_length": max(
                    1, min(p.max_output, round(r["output_length"] * p.token_scale))
                ),
                "hash_ids": list(r["hash_ids"]),
            }
        )
    return out


def _scaled_length(length: int, n_hash: int, token_scale: float) -> int:
    """Scaled input length, kept consistent with the hash ids (AIPerf checks it): the last
    hash block holds between 1 and a full block of tokens."""
    block = round(MOONCAKE_HASH_BLOCK * token_scale)
    scaled = round(length * token_scale)
    return max((n_hash - 1) * block + 1, min(n_hash * block, scaled))


def mooncake_sessions(p: MooncakeParams) -> list[Session]:
    """One single-turn session per trace line; text per hash id is deterministic."""
    per_block = round(MOONCAKE_HASH_BLOCK * p.token_scale)
    sessions = []
    for i, row in enumerate(mooncake_rows(p)):
        body = "".join(text(seeded_rng("mooncake-hash", h), per_block) for h in row["hash_ids"])
        n_words = row["input_length"]
        # Trim to the scaled input length (last hash block is partial in the trace too).
        pieces = body.split(" ")[1:][:n_words]
        content = "".join(" " + w for w in pieces)
        turn = Turn(
            messages=[{"role": "user", "content": content}], max_tokens=row["output_length"]
        )
        sessions.append(
            Session(
                f"mooncake-{i}",
                row["timestamp"] / 1000,
                [turn],
                klass="mooncake",
                send_session_header=False,
            )
        )
    return sessions


def mooncake_ideal_per_row(rows: list[dict[str, Any]]) -> list[int]:
    """Ideal cached tokens per trace row from the hash ids alone (one id = one 64-token block):
    the leading ids already seen in an earlier row, in full blocks of the row's input."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for r in rows:
        ids = r["hash_ids"]
        full = min(len(ids), r["input_length"] // BLOCK_SIZE)
        k = 0
        while k < full and tuple(ids[: k + 1]) in seen:
            k += 1
        out.append(k * BLOCK_SIZE)
        for j in range(1, len(ids) + 1):
            seen.add(tuple(ids[:j]))
    return out


def mooncake_ideal_from_hashes(rows: list[dict[str, Any]]) -> float:
    total = sum(r["input_length"] for r in rows)
    return sum(mooncake_ideal_per_row(rows)) / total if total else 0.0


# ----------------------------------------------------------------------------- the five
def build(name: str, seed: int, scale: float, speedup: float = 1.0) -> Workload:
    """scale 1.0 = the full run (32 sessions arriving over 40 s per agentic workload, Mooncake
    1/16 of the conversations in 100 s); the short run (scale < 0.75) also shortens sessions
    (3-6 turns, iat up to 1 s) and replays 1/96 of the conversations in 15 s, so that 25
    cluster bring-ups and runs fit in `make bench`'s 10 minutes."""
    short = scale < 0.75
    n = lambda k: max(2, round(k * scale))  # noqa: E731
    window = lambda s: s * scale  # noqa: E731 - same arrival rate at every scale
    kw: dict[str, Any] = {"turns": (3, 6), "iat_ms": (250, 500, 1000)} if short else {}
    if name == "agentic":
        p = AgenticParams(sessions=n(32), arrival_window_s=window(40.0), **kw)
        sessions = agentic_sessions(seed, p)
        wl = Workload(
            name,
            sessions,
            f"agent sessions: {p.agent_types} agent types with "
            f"{p.system_tokens[0]}-{p.system_tokens[1]}-token system prompts, a "
            f"{p.task_tokens[0]}-{p.task_tokens[1]}-token task, {p.turns[0]}-{p.turns[1]} "
            f"turns each adding a {p.osl[0]}-{p.osl[1]}-token answer and a "
            f"{p.tool_tokens[0]}-{p.tool_tokens[1]}-token tool result; tool gaps "
            f"lognormal(sigma {p.gap_sigma}) around the session's iat "
            f"({'/'.join(map(str, p.iat_ms))} ms); {p.sessions} sessions arriving "
            f"uniformly over {p.arrival_window_s:g} s; NAT hints on every request",
            speeds=[speedup] * 4,
            gpu_blocks=512,
        )
    elif name == "heterogeneous":
        p = AgenticParams(sessions=n(32), arrival_window_s=window(40.0), **kw)
        wl = Workload(
            name,
            agentic_sessions(seed + 1, p),
            "the agentic workload on workers of speed [1, 1, 0.4, 0.4] x speedup",
            speeds=[speedup, speedup, 0.4 * speedup, 0.4 * speedup],
            gpu_blocks=512,
        )
    elif name == "pressure":
        p = AgenticParams(sessions=n(48), arrival_window_s=window(40.0), **{"turns": (4, 8), **kw})
        blocks = 128 if short else 192
        wl = Workload(
            name,
            agentic_sessions(seed + 2, p),
            f"the agentic workload (another seed) with 1.5x the sessions ({p.sessions}), "
            f"{p.turns[0]}-{p.turns[1]} turns, and {blocks} KV blocks ({blocks * 64 // 1024}k "
            "tokens) per worker: "
            "the cluster's KV capacity is below the live working set (scaling: "
            "peak_live_blocks_estimate vs cluster_kv_blocks)",
            speeds=[speedup] * 4,
            gpu_blocks=blocks,
        )
    elif name == "agentic_pressure":
        # The live pressure case: 4 workers of 512 blocks, ~30 live sessions, tool gaps
        # of seconds, contexts to ~14k tokens; the live context is well above the cluster's KV.
        p = AgenticParams(
            sessions=n(AGENTIC_PRESSURE_SESSIONS),
            arrival_window_s=window(AGENTIC_PRESSURE_WINDOW_S),
            system_tokens=(1500, 3500),
            task_tokens=(200, 600),
            turns=(6, 12),
            tool_tokens=(500, 1200),
            osl=(16, 48),
            iat_ms=(1500, 3000, 5000, 8000),
            gap_sigma=0.4,
            gap_clip_s=(1.0, 10.0),
            id_prefix="press",
        )
        wl = Workload(
            name,
            agentic_sessions(seed + 4, p),
            f"agent sessions under KV pressure: {p.sessions} sessions arriving over "
            f"{p.arrival_window_s:g} s, {p.turns[0]}-{p.turns[1]} turns, "
            f"{p.system_tokens[0]}-{p.system_tokens[1]}-token system prompts "
            f"({p.agent_types} agent types), {p.tool_tokens[0]}-{p.tool_tokens[1]}-token tool "
            f"results, tool gaps lognormal around {'/'.join(map(str, p.iat_ms))} ms clipped to "
            "1-10 s, contexts to ~14k tokens; 4 workers x 512 blocks, below the live working "
            "set (scaling: peak_live_blocks_estimate vs cluster_kv_blocks)",
            speeds=[speedup] * 4,
            gpu_blocks=512,
        )
    elif name == "mixed":
        inter = AgenticParams(
            sessions=n(24),
            arrival_window_s=window(40.0),
            osl=(8, 24),
            iat_ms=(200, 400, 600),
            turns=kw.get("turns", (4, 10)),
            latency_sensitivity=2.0,
            priority=2,
            klass="latency_sensitive",
            id_prefix="chat",
        )
        batch = AgenticParams(
            sessions=n(10),
            arrival_window_s=window(40.0),
            turns=(2, 3),
            task_tokens=(3000, 6000),
            osl=(128, 256),
            iat_ms=(100, 200),
            tool_tokens=(500, 1500),
            latency_sensitivity=0.0,
            priority=0,
            klass="batch",
            id_prefix="batch",
        )
        sessions = agentic_sessions(seed + 3, inter) + agentic_sessions(seed + 3, batch)
        wl = Workload(
            name,
            sessions,
            "latency-sensitive agent sessions (8-24-token answers, 200-600 ms gaps, "
            "latency_sensitivity 2, priority 2) mixed with batch sessions (3-6k-token "
            "documents, 128-256-token answers, latency_sensitivity 0, priority 0)",
            speeds=[speedup] * 4,
            gpu_blocks=512,
        )
    elif name == "mooncake":
        # full run: 1/16 of the conversations, the hour in 100 s; short: 1/96, in 15 s
        span = 15.0 if short else 100.0
        p = MooncakeParams(sample_every=96 if short else 16, time_scale=span / 3537.0)
        sessions = mooncake_sessions(p)
        rows = mooncake_rows(p)
        wl = Workload(
            name,
            sessions,
            "replay of the Mooncake FAST'25 conversation trace: a sample of its "
            "conversations over the whole hour, time compressed, lengths / 8, no hints",
            speeds=[speedup] * 4,
            gpu_blocks=512,
            scaling={
                "trace": "../shared/traces/mooncake_conversation_trace.jsonl",
                "conversation_sample": f"1/{p.sample_every} (second hash id % "
                f"{p.sample_every} == 0)",
                "requests": len(rows),
                "token_scale": p.token_scale,
                "tokens_per_hash_id": int(MOONCAKE_HASH_BLOCK * p.token_scale),
                "time_scale": p.time_scale,
                "output_cap_tokens": p.max_output,
                "replay_span_s": rows[-1]["timestamp"] / 1000,
                "ideal_hit_ratio_from_hash_ids": round(mooncake_ideal_from_hashes(rows), 4),
            },
        )
        wl.scaling["rows"] = rows  # for the AIPerf trace file; dropped before writing meta
    else:
        raise ValueError(f"unknown workload {name!r}")
    annotate_ideal(wl.sessions)
    if name != "mooncake":
        wl.scaling["peak_live_blocks_estimate"] = peak_live_blocks(wl.sessions)
        wl.scaling["peak_live_distinct_blocks_estimate"] = peak_live_blocks(
            wl.sessions, distinct=True
        )
        wl.scaling["max_prompt_tokens"] = max(t.prompt_tokens for s in wl.sessions for t in s.turns)
        wl.scaling["cluster_kv_blocks"] = wl.gpu_blocks * len(wl.speeds)
    return wl


def peak_live_blocks(sessions: list[Session], turn_s: float = 0.5, distinct: bool = False) -> int:
    """Largest sum over live sessions of their current context in 64-token blocks, on the
    planned schedule (each turn assumed to take turn_s): the working set the cluster's KV
    caches would need to keep every live conversation (system prompts counted per session).
    With ``distinct`` a session's system prompt counts once per agent type (one copy, ever
    held: a lower bound for a cluster that must keep each type's prompt on one worker)."""
    events: list[tuple[float, int]] = []
    shared: dict[str, int] = {}
    for s in sessions:
        t = s.start_s
        prev = 0
        system = s.turns[0].messages[0]["content"] if s.turns[0].messages else ""
        sys_blocks = len(system.split(" ")) // BLOCK_SIZE if distinct else 0
        if distinct and s.turns[0].messages[0]["role"] == "system":
            shared[system] = sys_blocks
        else:
            sys_blocks = 0
        for i, turn in enumerate(s.turns):
            t += turn.gap_s if i else 0.0
            blocks = (turn.prompt_tokens + turn.max_tokens) // BLOCK_SIZE - sys_blocks
            events.append((t, blocks - prev))
            prev = blocks
            t += turn_s
        events.append((t, -prev))
    live = peak = sum(shared.values())
    for _, d in sorted(events):
        live += d
        peak = max(peak, live)
    return peak


AGENTIC_PRESSURE_SESSIONS = 120
AGENTIC_PRESSURE_WINDOW_S = 120.0
WORKLOADS = ("agentic", "mooncake", "heterogeneous", "pressure", "mixed", "agentic_pressure")
