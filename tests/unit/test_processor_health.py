"""Processor-side reliability pieces without a stack: lost trace records in the metrics."""

from __future__ import annotations

from processor.metrics import ProcessorMetrics


def _dropped(m: ProcessorMetrics) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for fam in m.registry.collect()
        if fam.name == "akr_processor_trace_records_dropped"
        for s in fam.samples
        if s.name.endswith("_total")
    }


def test_trace_losses_are_exported_by_reason_from_zero() -> None:
    m = ProcessorMetrics()
    assert set(_dropped(m)) >= {"queue_full", "unwritable", "disk_full"}
    assert not any(_dropped(m).values())
    m.sync_trace_lost({"unwritable": 3, "queue_full": 0})
    m.sync_trace_lost({"unwritable": 5, "queue_full": 1})
    assert _dropped(m)["unwritable"] == 5 and _dropped(m)["queue_full"] == 1
