"""The trace writer never slows its callers: bounded queue, drops counted, rotation, flush."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from router.jsonl_writer import JsonlWriter


def read_lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


async def _until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for the writer task to get somewhere (it signals nothing)."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.01)


async def test_writes_and_close_flushes(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "sub" / "t.jsonl")
    w.start()
    for i in range(1000):
        assert w.put({"i": i, "s": "x"})
    await w.close()
    recs = read_lines(tmp_path / "sub" / "t.jsonl")
    assert [r["i"] for r in recs] == list(range(1000))
    assert (w.written, w.dropped, w.errors) == (1000, 0, 0)
    assert not w.put({"late": True}) and w.dropped == 1


async def test_close_without_start_still_flushes(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "t.jsonl")
    w.put({"a": 1})
    await w.close()
    assert read_lines(tmp_path / "t.jsonl") == [{"a": 1}]


async def test_slow_disk_never_slows_callers(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "t.jsonl", queue_size=100, batch_max=10)
    calls = 0

    async def slow_write(data: bytes) -> None:  # a disk taking 200 ms per write
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)

    w._write = slow_write  # type: ignore[method-assign]
    w.start()
    n = 20_000
    t0 = time.perf_counter()
    worst = 0.0
    for i in range(n):
        t = time.perf_counter()
        w.put({"i": i})
        worst = max(worst, time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"{n} puts took {elapsed:.3f}s"  # ~µs each, no awaiting
    assert worst < 0.05
    assert w.dropped >= n - 100 - 10
    # Meanwhile the loop stays free: a 10 ms sleep is not held up by the writer.
    t = time.perf_counter()
    await asyncio.sleep(0.01)
    assert time.perf_counter() - t < 0.15
    await w.close()
    assert w.written + w.dropped == n and calls >= 1


async def test_rotation_keeps_n_files(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    w = JsonlWriter(p, max_bytes=2000, backups=2, batch_max=8)
    w.start()
    for i in range(2000):
        w.put({"i": i, "pad": "x" * 40})
        if i % 50 == 0:
            await asyncio.sleep(0.005)
    await w.close()
    files, sizes = await asyncio.to_thread(_sizes, tmp_path)
    assert files == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"]
    assert all(size <= 2000 for size in sizes)
    newest = [r["i"] for r in read_lines(p)]
    older = [r["i"] for r in read_lines(tmp_path / "t.jsonl.1")]
    assert newest and older and older[-1] < newest[0]
    assert newest[-1] == 1999 and w.written == 2000


def _sizes(directory: Path) -> tuple[list[str], list[int]]:
    files = sorted(x.name for x in directory.iterdir())
    return files, [(directory / f).stat().st_size for f in files]


async def test_records_are_encoded_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of long prompts' block hashes is megabytes of JSON: never on the loop."""
    threads: set[int] = set()
    real = msgspec.json.Encoder

    class Watched:
        def __init__(self) -> None:
            self.inner = real()

        def encode_lines(self, items: object) -> bytes:
            threads.add(threading.get_ident())
            return self.inner.encode_lines(items)

    monkeypatch.setattr(msgspec.json, "Encoder", Watched)
    w = JsonlWriter(tmp_path / "t.jsonl")
    w.start()
    w.put({"block_hashes": list(range(1000))})
    await w.close()
    assert len(read_lines(tmp_path / "t.jsonl")) == 1
    assert threads and threading.get_ident() not in threads


async def test_unencodable_record_is_counted_not_fatal(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "t.jsonl")
    w.start()
    w.put({"ok": 1})
    w.put({"bad": object()})
    w.put({"ok": 2})
    await w.close()
    assert read_lines(tmp_path / "t.jsonl") == [{"ok": 1}, {"ok": 2}]
    assert w.errors == 1 and w.written == 2


async def _first_batch_fails(w: JsonlWriter, failing: Callable[[bytes], Awaitable[None]]) -> None:
    """Writes {"a": 1} through ``failing`` (which raises), then {"a": 2} through the writer's
    own write; the file must hold the second record only, whole."""
    orig = w._write

    async def first_fails(data: bytes) -> None:
        await (failing(data) if not w.errors else orig(data))

    w._write = first_fails  # type: ignore[method-assign]
    w.start()
    w.put({"a": 1})
    for _ in range(200):  # until the first batch has failed (after the writer's linger)
        if w.errors:
            break
        await asyncio.sleep(0.01)
    w.put({"a": 2})
    await w.close()
    assert w.errors == 1 and w.written == 1
    assert read_lines(w.path) == [{"a": 2}]


async def test_io_error_is_counted_and_writer_survives(tmp_path: Path) -> None:
    async def disk_full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    await _first_batch_fails(JsonlWriter(tmp_path / "t.jsonl"), disk_full)


async def test_a_write_that_fails_part_way_leaves_no_partial_line(tmp_path: Path) -> None:
    """A disk that fills mid-write: the failed batch's bytes come off the file, so the next
    record is whole and readable."""
    w = JsonlWriter(tmp_path / "t.jsonl", linger_s=0)

    async def partial(data: bytes) -> None:
        await w._file.write(data[:5])
        raise OSError(28, "No space left on device")

    await _first_batch_fails(w, partial)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        JsonlWriter("x", queue_size=0)
    with pytest.raises(ValueError):
        JsonlWriter("x", linger_s=-1)


async def test_records_put_within_the_linger_go_out_in_one_write(tmp_path: Path) -> None:
    """One hand-off to the writer thread per batch, not per record (module docstring)."""
    w = JsonlWriter(tmp_path / "t.jsonl", linger_s=0.2)
    writes: list[bytes] = []
    orig = w._write

    async def counted(data: bytes) -> None:
        writes.append(data)
        await orig(data)

    w._write = counted  # type: ignore[method-assign]
    w.start()
    for i in range(50):
        w.put({"i": i})
        await asyncio.sleep(0)
    await w.close()
    assert len(writes) == 1
    assert read_lines(tmp_path / "t.jsonl") == [{"i": i} for i in range(50)]


async def test_written_records_are_not_kept_alive_while_idle(tmp_path: Path) -> None:
    """Once written, a batch is released even if no further record arrives (memory of the
    processor would otherwise hold the last batch's block hashes for as long as it idles)."""
    import gc
    import weakref

    import msgspec

    class Rec(msgspec.Struct, weakref=True):
        block_hashes: list[int]

    w = JsonlWriter(tmp_path / "t.jsonl")
    w.start()
    recs = [Rec(list(range(500))) for _ in range(3)]
    refs = [weakref.ref(r) for r in recs]
    for r in recs:
        w.put(r)
    del recs, r
    deadline = time.monotonic() + 5
    while w.written < 3 and time.monotonic() < deadline:  # noqa: ASYNC110 - the writer has no event
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the writer is idle, waiting for the next record
    gc.collect()
    assert w.written == 3 and all(ref() is None for ref in refs)
    await w.close()


async def test_disk_full_loses_records_counted_by_reason() -> None:
    """/dev/full accepts the open and fails every write with ENOSPC, like a full disk."""
    w = JsonlWriter("/dev/full", linger_s=0)
    w.start()
    for i in range(5):
        w.put({"i": i})
    await w.close()
    assert w.written == 0
    assert w.lost["disk_full"] == 5 and sum(w.lost.values()) == 5


async def test_unwritable_path_loses_records_counted_by_reason(tmp_path: Path) -> None:
    """A trace path below a regular file can never be created (as root too, unlike chmod)."""
    (tmp_path / "file").write_text("")
    w = JsonlWriter(tmp_path / "file" / "t.jsonl", linger_s=0)
    w.start()
    for i in range(3):
        w.put({"i": i})
    await w.close()
    assert w.written == 0 and w.lost["unwritable"] == 3 and sum(w.lost.values()) == 3


async def test_every_unwritten_record_has_a_reason(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "t.jsonl", queue_size=2)
    w.put({"a": 1})
    w.put({"bad": object()})
    w.put({"a": 3})  # queue full
    await w.close()
    w.put({"a": 4})  # closed
    assert w.written == 1
    assert {k: v for k, v in w.lost.items() if v} == {
        "queue_full": 1,
        "unencodable": 1,
        "closed": 1,
    }
    assert sum(w.lost.values()) == w.dropped + w.errors


def test_io_loss_reasons() -> None:
    import errno

    from router.jsonl_writer import io_loss_reason

    assert io_loss_reason(OSError(errno.ENOSPC, "full")) == "disk_full"
    assert io_loss_reason(OSError(errno.EROFS, "ro")) == "unwritable"
    assert io_loss_reason(PermissionError(errno.EACCES, "no")) == "unwritable"
    assert io_loss_reason(OSError(errno.EIO, "io")) == "io_error"


@pytest.mark.parametrize("how", ["directory removed", "file moved away"])
async def test_records_after_the_file_vanished_reach_a_new_file(tmp_path: Path, how: str) -> None:
    """The trace directory removed (or the file moved away, as logrotate does) mid-run: later
    records go to a new file at the configured path, not into the unreachable old inode while
    being counted as written (a silent loss no alert sees)."""
    path = tmp_path / "traces" / "t.jsonl"
    w = JsonlWriter(path, linger_s=0)
    w.start()
    w.put({"i": 0})
    await _until(lambda: w.written == 1)
    if how == "directory removed":
        shutil.rmtree(path.parent)
    else:
        path.rename(tmp_path / "moved.jsonl")
    for i in (1, 2):
        w.put({"i": i})
    await w.close()
    assert read_lines(path) == [{"i": 1}, {"i": 2}]
    assert w.written == 3 and sum(w.lost.values()) == 0


async def test_a_full_disk_is_logged_ever_more_rarely_not_per_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every batch fails on a full disk (one every linger under load): one warning per batch
    would flood the log, which often sits on that same disk. Warnings come at the 1st, 2nd,
    4th, ... failure in a row; the losses are counted anyway."""
    w = JsonlWriter("/dev/full", linger_s=0)
    w.start()
    with caplog.at_level("WARNING", logger="router.jsonl_writer"):
        for i in range(64):
            w.put({"i": i})
            await _until(lambda i=i: w.lost["disk_full"] == i + 1)
        await w.close()
    assert w.lost["disk_full"] == 64
    assert len(caplog.records) == 7, [r.getMessage() for r in caplog.records]  # 1, 2, ..., 64
