"""What a cache of the cluster's size could do on a KV-pressure run: long recomputes per policy.

    python -m benchmarks.pressure_bound [benchmarks/results/routing_pressure.json]

Why: on ``agentic_pressure`` the TTFT p99 of every arm is a late turn recomputing a long
context the cluster evicted. Whether a router could push those below 1% of requests (so the
p99 leaves that class) depends on what ANY cache of the cluster's size keeps. This feeds the
run's requests, in the order our arm sent them (``t_send_s`` from the records, prompts rebuilt
from the seeded workload), to one pooled cache of ``cluster_kv_blocks`` blocks under four
eviction policies and counts requests left with >= ``LONG`` uncached tokens:

* ``lru``: least recently used (what the pooled-cache bound of the replay uses);
* ``finished_first``: blocks last used by a conversation that sent all its turns go first;
* ``due_last``: the conversation due back last (last use + its ``iat`` hint) goes first;
* ``value``: finished conversations first, then the one worth least per second kept: its
  context's tokens (what losing it costs to recompute) over the time until it is due back
  (last use + ``iat``, at least ``DUE_FLOOR_S``); a conversation's last blocks go before its first;
* ``belady``: the block whose next use is furthest (clairvoyant; no real cache can do it).

Next to them: the arms' own counts from the records.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import heapq
import json
from array import array
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

from benchmarks.workloads import BLOCK_SIZE, _chat_template, _tokenizer, build

RESULTS = Path(__file__).resolve().parent / "results"
LONG = 8000
POLICIES = ("lru", "finished_first", "due_last", "value", "belady")
DUE_FLOOR_S = 0.5


def chains(wl_name: str, seed: int) -> dict[tuple[str, int], tuple[list[bytes], int, int, int]]:
    """(session, turn) -> (block hash chain, prompt tokens, total turns, iat ms)."""
    wl = build(wl_name, seed, 1.0)
    keys, texts, meta = [], [], []
    tpl = _chat_template()
    for s in wl.sessions:
        for i, t in enumerate(s.turns):
            keys.append((s.session_id, i))
            texts.append(tpl.render(messages=t.messages, add_generation_prompt=True))
            meta.append((len(s.turns), int((t.hints or {}).get("iat", 1000))))
    out = {}
    for k, enc, (n, iat) in zip(keys, _tokenizer().encode_batch(texts), meta, strict=True):
        raw = array("I", enc.ids).tobytes()
        h = hashlib.blake2b(digest_size=16)
        chain = []
        step = BLOCK_SIZE * 4
        for b in range(len(enc.ids) // BLOCK_SIZE):
            h.update(raw[b * step : (b + 1) * step])
            chain.append(h.copy().digest())
        out[k] = (chain, len(enc.ids), n, iat)
    return out


def simulate(
    reqs: list[dict[str, Any]], cap: int, policy: str, totals: dict[str, int], iats: dict[str, int]
) -> tuple[float, int]:
    """(reuse, requests with >= LONG uncached tokens) of one pooled cache of cap blocks."""
    next_use: list[dict[bytes, int]] = [{} for _ in reqs]
    last: dict[bytes, int] = {}
    for i in range(len(reqs) - 1, -1, -1):
        for h in reqs[i]["chain"]:
            next_use[i][h] = last.get(h, 1 << 40)
        for h in reqs[i]["chain"]:
            last[h] = i
    cache: OrderedDict[bytes, None] = OrderedDict()
    owner: dict[bytes, str] = {}
    nxt: dict[bytes, int] = {}
    seen: dict[str, int] = defaultdict(int)
    last_s: dict[str, float] = {}
    context: dict[str, int] = {}
    place: dict[bytes, int] = {}
    prompt = cached = long = 0

    def finished(s: str) -> bool:
        return seen[s] >= totals[s]

    def due_at(s: str) -> float:
        return last_s[s] + iats[s] / 1000

    for i, r in enumerate(reqs):
        hit = 0
        for h in r["chain"]:
            if h not in cache:
                break
            hit += 1
        prompt += r["prompt"]
        cached += hit * BLOCK_SIZE
        long += r["prompt"] - hit * BLOCK_SIZE >= LONG
        sid = r["session"]
        seen[sid] += 1
        last_s[sid] = r["t"]
        context[sid] = r["prompt"]
        for j, h in enumerate(r["chain"]):
            place[h] = j
            cache[h] = None
            cache.move_to_end(h)
            owner[h] = sid
            nxt[h] = next_use[i][h]
        excess = len(cache) - cap
        if excess <= 0:
            continue
        if policy == "lru":
            for _ in range(excess):
                cache.popitem(last=False)
            continue
        if policy == "belady":
            victims = heapq.nlargest(excess, cache, key=nxt.__getitem__)
        elif policy == "finished_first":
            done = [h for h in cache if finished(owner[h])][:excess]
            chosen = set(done)
            victims = done + [h for h in cache if h not in chosen][: excess - len(done)]
        elif policy == "value":

            def worth(h: bytes, now: float = r["t"]) -> tuple[float, int]:
                s = owner[h]
                if finished(s):
                    return (0.0, -place[h])
                return (context[s] / max(DUE_FLOOR_S, due_at(s) - now), -place[h])

            victims = heapq.nsmallest(excess, cache, key=worth)
        else:  # due_last

            def due(h: bytes) -> float:
                return float("inf") if finished(owner[h]) else due_at(owner[h])

            victims = heapq.nlargest(excess, cache, key=due)
        for h in victims:
            del cache[h]
    return cached / prompt if prompt else 0.0, long


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("results", nargs="?", default=str(RESULTS / "routing_pressure.json"))
    args = ap.parse_args()
    res = json.loads(Path(args.results).read_text())
    meta = res["meta"]
    recs_path = Path(args.results).with_name(Path(args.results).stem + "_records.jsonl.gz")
    records = [json.loads(line) for line in gzip.open(recs_path, "rt")]
    seeds = meta.get("seeds") or [meta["seed"]]
    for wname, wmeta in meta["workloads"].items():
        cap = wmeta["scaling"]["cluster_kv_blocks"]
        print(f"{wname}: pooled cache of {cap} blocks, requests with >= {LONG} tokens uncached")
        print("| seed | requests | " + " | ".join(POLICIES) + " | ours (run) | dynamo_kv (run) |")
        print("|---|---:|" + "---:|" * (len(POLICIES) + 2))
        for rep, seed in enumerate(seeds):
            ch = chains(wname, seed)
            totals: dict[str, int] = {}
            iats: dict[str, int] = {}
            for (sid, _), (_, _, n, iat) in ch.items():
                totals[sid], iats[sid] = n, iat
            mine = [r for r in records if r["workload"] == wname and r["repeat"] == rep]
            ours = sorted((r for r in mine if r["arm"] == "ours"), key=lambda r: r["t_send_s"])
            reqs = [
                {
                    "session": r["session"],
                    "t": r["t_send_s"],
                    "chain": ch[(r["session"], r["turn"])][0],
                    "prompt": ch[(r["session"], r["turn"])][1],
                }
                for r in ours
            ]
            cells = []
            for pol in POLICIES:
                reuse, long = simulate(reqs, cap, pol, totals, iats)
                cells.append(f"{long} ({long / len(reqs):.1%}, reuse {reuse:.2f})")
            for arm in ("ours", "dynamo_kv"):
                rs = [r for r in mine if r["arm"] == arm and r.get("ttft_ms") is not None]
                n = sum(r["prompt_tokens"] - r["cached_tokens"] >= LONG for r in rs)
                hit = sum(r["cached_tokens"] for r in rs) / max(
                    1, sum(r["prompt_tokens"] for r in rs)
                )
                cells.append(f"{n} ({n / max(1, len(rs)):.1%}, hit {hit:.2f})")
            print(f"| {seed} | {len(reqs)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
