"""``python -m benchmarks.replay``: replay traces on a virtual clock, our router among the arms.

    python -m benchmarks.replay run --trace FILE [--format mooncake|agentic] --workers 8 \
        [--blocks 16384] [--speeds 1,1,0.5,...] [--arms ours,dynamo_kv_port,round_robin]
    python -m benchmarks.replay suite [--quick] [--seed N]  # make replay
    python -m benchmarks.replay suite --heldout [--seed N]  # cases outside the suite
    python -m benchmarks.replay bound [--only agentic-8] [--records DIR]
    python -m benchmarks.replay fidelity                  # against Dynamo's own replay
    python -m benchmarks.replay.agentic generate|convert ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="replay one trace on one cluster, print a table")
    run.add_argument("--trace", type=Path, required=True)
    run.add_argument("--format", choices=("mooncake", "agentic"), default="mooncake")
    run.add_argument("--limit", type=int, default=None, help="first N requests only")
    run.add_argument("--workers", type=int, default=8)
    run.add_argument("--blocks", type=int, default=16384, help="KV blocks per worker")
    run.add_argument("--speeds", type=str, default=None, help="per-worker speedup ratios")
    run.add_argument("--speedup", type=float, default=1.0, help="every worker's speedup ratio")
    run.add_argument("--arrival-speedup", type=float, default=1.0)
    run.add_argument("--kv-event-lag-ms", type=float, default=0.0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--json", type=Path, default=None, help="write the figures here")
    run.add_argument("--slo-ttft-ms", type=float, default=2000.0)
    run.add_argument("--arms", type=str, default="ours,dynamo_kv_port,round_robin")
    run.add_argument("--records", type=Path, default=None, help="write records here (dir)")
    suite = sub.add_parser("suite", help="the standard suite -> results/replay/suite.json")
    suite.add_argument("--quick", action="store_true", help="small slices, for a smoke run")
    suite.add_argument(
        "--only",
        type=str,
        default=None,
        help="comma-separated workloads or cases; the report in --out keeps the others",
    )
    suite.add_argument(
        "--heldout", action="store_true", help="cases outside the suite -> heldout.json"
    )
    suite.add_argument("--jobs", type=int, default=2)
    suite.add_argument("--out", type=Path, default=None)
    suite.add_argument(
        "--seed", type=int, default=0, help="added to the generated traces' and the routers' seeds"
    )
    bound = sub.add_parser("bound", help="the lowest TTFT ratio to dynamo_kv any router reaches")
    bound.add_argument("--only", type=str, default=None, help="comma-separated suite cases")
    bound.add_argument("--records", type=Path, default=None, help="suite records (dir)")
    bound.add_argument("--out", type=Path, default=None, help="bound.json/.md here (results)")
    sub.add_parser("fidelity", help="our engine against Dynamo's replay -> fidelity.json")
    args = p.parse_args(argv)

    if args.cmd == "fidelity":
        from benchmarks.replay import fidelity

        return fidelity.main([])
    if args.cmd == "bound":
        from benchmarks.replay import bound as bound_mod

        return bound_mod.main(args)
    if args.cmd == "suite":
        from benchmarks.replay import suite as suite_mod

        return suite_mod.main(args)
    from benchmarks.replay import single

    return single.main(args)


if __name__ == "__main__":
    sys.exit(main())
