"""Async JSONL trace writer shared by the gateway and the processor.

Why: tracing must never slow the request path (NAT's "async" logs wrote files synchronously on
the event loop). Callers ``put`` a record into a bounded queue, O(1) and never awaiting; when the
queue is full the record is dropped and counted. One background task drains the queue in
batches, encodes them with msgspec (``encode_lines``, in a worker thread: a batch of long
prompts' block hashes is megabytes of JSON) and writes through ``aiofiles`` (a worker thread),
so a slow or full disk only fills the queue. Files rotate by size: ``path`` ->
``path.1`` -> ... -> ``path.N`` (oldest deleted). A file deleted or moved away from ``path``
(its directory removed, an external logrotate) is noticed at the next batch, which goes to a
new file at ``path``: records written into the old, unreachable file would count as written.

Each batch costs two hand-offs to worker threads (the encoding; the unbuffered file's one
``write``, no ``flush``), and the task waits ``linger_s`` after a batch's first record so that,
under load, a batch holds many records. Why: every hand-off wakes a thread that must take the
GIL, and in the processor the loop thread shares the GIL with Dynamo's Rust threads, which need
it for every request and streamed token; one write per request (write + flush, two hand-offs)
would put that contention on the request path. Records reach the disk ``linger_s`` later.

Records are encoded later, in a worker thread: do not mutate a record after ``put``.

Every record that does not reach the file is counted in ``lost`` by reason (``LOSS_REASONS``):
the queue was full, the writer was closed, the record could not be encoded, the path cannot
be written (permissions, read-only file system, a file where a directory should be), or the
disk is full. An operator alerts on these counts; a silent loss looks like a quiet service.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import msgspec

log = logging.getLogger(__name__)

__all__ = ["LOSS_REASONS", "JsonlWriter", "io_loss_reason"]

LOSS_REASONS = ("queue_full", "closed", "unencodable", "unwritable", "disk_full", "io_error")

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNWRITABLE = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOENT,
    errno.EEXIST,
}


def io_loss_reason(exc: OSError) -> str:
    """The ``lost`` reason of records a failed write took with it."""
    if exc.errno in _DISK_FULL:
        return "disk_full"
    if exc.errno in _UNWRITABLE:
        return "unwritable"
    return "io_error"


class JsonlWriter:
    """Bounded, drop-when-full JSONL writer; ``start()`` inside a running loop, ``close()`` flushes.

    Counters: ``written`` (records on disk), ``dropped`` (queue full or writer closed),
    ``errors`` (records lost to encoding or I/O errors), and ``lost`` (every record not
    written, by reason: the sum of ``dropped`` and ``errors``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        queue_size: int = 10_000,
        batch_max: int = 512,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 3,
        linger_s: float = 0.1,
    ) -> None:
        if queue_size < 1 or batch_max < 1 or max_bytes < 1 or backups < 0 or linger_s < 0:
            raise ValueError(
                "queue_size, batch_max, max_bytes must be >= 1, backups and linger_s >= 0"
            )
        self.path = Path(path)
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.max_bytes = max_bytes
        self.backups = backups
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.lost: dict[str, int] = dict.fromkeys(LOSS_REASONS, 0)
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._file: Any = None
        self._size = 0
        self._ident: tuple[int, int] | None = None  # (device, inode) of the open file
        self._torn = False  # a partial line could not be cut off the file
        self._failures = 0  # failed writes in a row
        self._unlogged = 0  # records they lost since the last warning

    # --- caller side ---------------------------------------------------------------------

    def put(self, record: Any) -> bool:
        """Queue one record; False (and ``dropped`` += 1) when full or closed. Never blocks."""
        if self._closing:
            self.dropped += 1
            self.lost["closed"] += 1
            return False
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            self.lost["queue_full"] += 1
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jsonl-writer")

    async def close(self) -> None:
        """Stop accepting records, write everything already queued, close the file."""
        self._closing = True
        if self._task is None and not self._queue.empty():
            self.start()
        if self._task is not None:
            # Wake a task idle on an empty queue. If the queue is full there is no room, but
            # then the task is busy and stops once it has emptied the queue (_closing is set).
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        await self._close_file()

    # --- writer task ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if self.linger_s and first is not _STOP and not self._closing:
                await asyncio.sleep(self.linger_s)  # let a batch gather (module docstring)
            batch = [first]
            while len(batch) < self.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = any(r is _STOP for r in batch)
            if stop:
                batch = [r for r in batch if r is not _STOP]
            if batch:
                await self._write_batch(batch)
            # Unbind the written records before waiting for the next one: otherwise the last
            # batch (up to batch_max records, each with its prompt's block hashes) stays alive
            # while the writer idles, retained memory growing with prompt length.
            first = batch = None
            if (stop or self._closing) and self._queue.empty():
                return

    def _encode(self, batch: list[Any]) -> tuple[bytes, int]:
        """JSON lines of the batch and how many records they hold (the rest cannot be encoded).
        Runs in a worker thread: touches no state of the writer."""
        encoder = msgspec.json.Encoder()  # one per call: encoders are not shared across threads
        try:
            return encoder.encode_lines(batch), len(batch)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            parts = []
            for r in batch:
                with contextlib.suppress(TypeError, ValueError, OverflowError, msgspec.EncodeError):
                    parts.append(encoder.encode(r))
            return (b"\n".join(parts) + b"\n" if parts else b""), len(parts)

    def _prepare(self, batch: list[Any]) -> tuple[bytes, int, tuple[int, int] | None]:
        """``_encode``, and which file ``path`` names now: in the same worker thread, so the
        check costs no extra hand-off."""
        return *self._encode(batch), _ident(self.path)

    async def _write_batch(self, batch: list[Any]) -> None:
        # Off the loop: a batch of long prompts' block hashes is megabytes of JSON (tens of ms).
        data, n, at_path = await asyncio.to_thread(self._prepare, batch)
        if n < len(batch):
            self.errors += len(batch) - n
            self.lost["unencodable"] += len(batch) - n
        if not data:
            return
        start: int | None = None
        if self._file is not None and at_path != self._ident:
            log.warning("trace file %s was deleted or moved; writing a new one", self.path)
            await self._close_file()
            self._torn = False  # a partial line left behind is in the old file
        try:
            if self._file is None:
                await self._open()
            if self._size > 0 and self._size + len(data) > self.max_bytes:
                await self._rotate()  # before writing: a file only exceeds max_bytes when
                await self._open()  # one batch alone does
            start = self._size
            if self._torn:  # a failed batch's partial line is still there: end it
                data = b"\n" + data
            await self._write(data)
            self._torn = False
            self._size += len(data)
            self.written += n
            self._resumed()
        except OSError as e:
            self.errors += n
            self.lost[io_loss_reason(e)] += n
            self._failed(e, n)
            if start is not None:
                await self._cut_back(start)
            await self._close_file()

    def _failed(self, e: OSError, n: int) -> None:
        """Log the 1st, 2nd, 4th, 8th, ... failed write in a row. Why: on a full disk every
        batch fails (ten a second under load), and a warning each would flood a log that
        often sits on the same disk; the losses are counted in ``lost`` anyway."""
        self._failures += 1
        self._unlogged += n
        if self._failures & (self._failures - 1) == 0:
            log.warning(
                "trace write to %s failed (%s), %d in a row; %d records lost since the last "
                "warning",
                self.path,
                e,
                self._failures,
                self._unlogged,
            )
            self._unlogged = 0

    def _resumed(self) -> None:
        """A write succeeded after failures: say so (with what the last warning left out)."""
        if self._failures:
            log.warning(
                "trace writes to %s resumed after %d failed; %d more records were lost",
                self.path,
                self._failures,
                self._unlogged,
            )
            self._failures = self._unlogged = 0

    async def _cut_back(self, size: int) -> None:
        """Take a failed batch's bytes off the file, so that the next batch starts on a line of
        its own (appended to a partial line, its first record would be unreadable)."""
        try:
            await self._file.truncate(size)
        except OSError:
            self._torn = True

    async def _write(self, data: bytes) -> None:
        """The only disk write; tests replace it to simulate a slow disk."""
        view = memoryview(data)
        while view:  # an unbuffered write may take part of the bytes
            view = view[await self._file.write(view) :]

    async def _open(self) -> None:
        await aiofiles.os.makedirs(self.path.parent, exist_ok=True)
        self._file = await aiofiles.open(self.path, "ab", buffering=0)
        st = await aiofiles.os.stat(self.path)
        self._size, self._ident = st.st_size, (st.st_dev, st.st_ino)

    async def _close_file(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            with contextlib.suppress(OSError):
                await f.close()

    async def _rotate(self) -> None:
        await self._close_file()
        if self.backups == 0:
            await aiofiles.os.remove(self.path)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if await aiofiles.os.path.exists(src):
                    await aiofiles.os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            await aiofiles.os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._size = 0


def _ident(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_STOP = object()
