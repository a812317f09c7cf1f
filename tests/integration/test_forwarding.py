"""How the processor forwards: ``client.direct`` with the handler's context, against the
ThunderAgent pattern (``KvRouter.generate_from_request`` pinned with
``routing.backend_instance_id``), on three real Dynamo workers (recording_worker.py, streaming
one token per 100 ms).

What it shows, for both ways alike:

* a client that goes away stops the worker: ``direct`` through the stopped context, the pinned
  stream when it is dropped (Dynamo cancels on stream drop), so the missing context argument
  of ``generate_from_request`` loses nothing;
* a worker killed mid-stream surfaces as an error on the stream and nobody else takes the
  request over: neither call migrates (migration is the stock frontend's, in front of the
  processor, the same either way).

So the pattern would do; the processor keeps ``client.direct`` and its own load accounting
because the score's terms were measured with that accounting (docs/DESIGN.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploy.local_stack import LocalStack, StackConfig
from tests.integration.processor_util import run_probe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict]]:
    """The probe's view (tests/integration/forwarding_probe.py) and the workers' records."""
    path = tmp_path_factory.mktemp("forwarding") / "records.jsonl"
    config = StackConfig(
        speeds=[1.0, 2.0, 3.0],  # three worker processes (one per speed), one worker each
        arm="round-robin",
        worker_module="tests.integration.recording_worker",
        worker_env={"AKR_TEST_RECORD_PATH": str(path), "AKR_TEST_TOKEN_DELAY_S": "0.1"},
        supervise=False,  # the probe kills workers on purpose: no restart, nothing kept
        keep_workdir=False,
    )
    with LocalStack(config) as stack:
        probe = run_probe(stack, "tests.integration.forwarding_probe", str(path), timeout_s=180)
    return probe, [json.loads(line) for line in Path(path).read_text().splitlines()]


def _records(records: list[dict], head: int) -> tuple[list[dict], list[dict]]:
    """(starts, ends) of the request whose prompt begins with ``head``, on any worker."""
    mine = [r for r in records if r["head"][0] == head]
    return [r for r in mine if "event" not in r], [r for r in mine if r.get("event") == "end"]


@pytest.mark.parametrize(("probe", "head"), [("cancel_direct", 1000), ("cancel_pinned", 2000)])
def test_a_client_that_leaves_stops_the_worker(
    probed: tuple[dict[str, Any], list[dict]], probe: str, head: int
) -> None:
    view, records = probed
    assert view[probe]["received"] == 3
    starts, ends = _records(records, head)
    assert len(starts) == 1 and len(ends) == 1, records
    # Stopped within a few tokens of the client leaving, far from the 200 asked for.
    assert ends[0]["stopped"] and ends[0]["sent"] <= 6, ends


@pytest.mark.parametrize(("probe", "head"), [("kill_direct", 3000), ("kill_pinned", 4000)])
def test_a_killed_worker_is_an_error_and_no_other_worker_takes_over(
    probed: tuple[dict[str, Any], list[dict]], probe: str, head: int
) -> None:
    view, records = probed
    seen = view[probe]
    assert seen["received"] >= 1 and seen["error"], seen  # an error, not a quiet end
    starts, _ = _records(records, head)
    assert [r["pid"] for r in starts] == [seen["pid"]], starts  # not migrated elsewhere
