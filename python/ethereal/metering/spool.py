"""A bounded on-disk spool for usage records the database could not take.

Layout: ``<data_dir>/spool/<owner>/`` per meter (one per worker process), holding

- ``lock``: ``flock``-ed for the life of the meter. A directory whose lock can be
  taken belongs to a process that is gone: the next meter to look adopts it and
  replays its segments before its own (oldest first).
- ``NNNNNNNNNNNN.open``: the segment being appended to; ``NNNNNNNNNNNN.seg``: a
  closed segment. A segment is closed (fsync, rename, fsync of the directory)
  when it reaches ``segment_bytes`` and before it is replayed, so a replayed
  segment is complete on disk.

Segments are JSON lines: a header ``{"spool":1,"columns":[...]}`` then one
array of values per record, in ``columns`` order. Naming the columns keeps old
segments readable after a schema change. A line torn by a crash (the only way
to get one: appends are single ``write`` calls) is skipped and counted. Bodies
are never in a usage record, so never in the spool.

All methods are blocking: the meter calls them on its own I/O thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ethereal.storage.records import USAGE_COLUMNS, UsageRecord

log = logging.getLogger("ethereal.metering")

_HEADER = orjson.dumps({"spool": 1, "columns": list(USAGE_COLUMNS)}) + b"\n"
_FIELDS = frozenset(USAGE_COLUMNS)


@dataclass
class Segment:
    path: Path
    size: int
    owner_dir: Path  # the directory it lives in (ours, or an adopted one)
    records: int = -1  # unknown for segments found on disk


@dataclass
class SpoolStats:
    segments: int = 0
    bytes: int = 0
    torn_lines: int = 0
    adopted_dirs: int = 0
    spooled_records: int = 0
    replayed_records: int = 0
    segments_done: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class SpoolFull(Exception):
    """Appending would exceed the spool's byte bound."""


def encode(records: list[UsageRecord]) -> bytes:
    dumps = orjson.dumps
    return b"".join([dumps([getattr(r, c) for c in USAGE_COLUMNS]) + b"\n" for r in records])


def decode_lines(data: bytes) -> tuple[list[UsageRecord], int]:
    """Records from a segment's bytes; returns (records, torn or unreadable lines)."""
    columns: tuple[str, ...] = USAGE_COLUMNS
    records: list[UsageRecord] = []
    bad = 0
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(value, dict):
            cols = value.get("columns")
            if isinstance(cols, list):
                columns = tuple(cols)
            continue
        if not isinstance(value, list) or len(value) != len(columns):
            bad += 1
            continue
        try:
            if columns is USAGE_COLUMNS:
                records.append(UsageRecord(*value))
            else:
                records.append(
                    UsageRecord(**{c: v for c, v in zip(columns, value, strict=False) if c in _FIELDS})
                )
        except TypeError:
            bad += 1
    return records, bad


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path, *, max_bytes: int, segment_bytes: int = 8 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir = self.root / self.name
        self.dir.mkdir()
        self._lock_fd = os.open(self.dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._seq = 0
        self._open_fd: int | None = None
        self._open_path: Path | None = None
        self._open_size = 0
        self._open_records = 0
        self.pending: list[Segment] = []  # closed segments, oldest first
        self._adopted_locks: dict[Path, int] = {}
        self.stats = SpoolStats()
        self._bytes = 0
        self.adopt_orphans()

    # ------------------------------------------------------------------ size
    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def open_records(self) -> int:
        return self._open_records

    @property
    def empty(self) -> bool:
        return not self.pending and self._open_records == 0

    def has_room(self, nbytes: int) -> bool:
        return self._bytes + nbytes <= self.max_bytes

    # ------------------------------------------------------------------ writing
    def append(self, records: list[UsageRecord]) -> int:
        """Append records as one write; raises SpoolFull if they do not fit. Returns bytes written."""
        if not records:
            return 0
        data = encode(records)
        extra = 0 if self._open_fd is not None else len(_HEADER)
        if not self.has_room(len(data) + extra):
            raise SpoolFull(f"spool holds {self._bytes} bytes, limit {self.max_bytes}")
        if self._open_fd is None:
            self._seq += 1
            self._open_path = self.dir / f"{self._seq:012d}.open"
            self._open_fd = os.open(self._open_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            os.write(self._open_fd, _HEADER)
            self._open_size = len(_HEADER)
            self._bytes += len(_HEADER)
        view = memoryview(data)
        while view:
            n = os.write(self._open_fd, view)
            view = view[n:]
        self._open_size += len(data)
        self._open_records += len(records)
        self._bytes += len(data)
        self.stats.spooled_records += len(records)
        if self._open_size >= self.segment_bytes:
            self.seal()
        return len(data)

    def seal(self) -> None:
        """Close the open segment (fsync, rename to .seg, fsync the directory)."""
        if self._open_fd is None or self._open_path is None:
            return
        fd, path = self._open_fd, self._open_path
        self._open_fd = None
        self._open_path = None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = path.with_suffix(".seg")
        os.rename(path, final)
        _fsync_dir(self.dir)
        self.pending.append(Segment(final, self._open_size, self.dir, self._open_records))
        self._open_size = 0
        self._open_records = 0

    def sync(self) -> None:
        if self._open_fd is not None:
            os.fsync(self._open_fd)

    # ------------------------------------------------------------------ replaying
    def next_segment(self) -> Segment | None:
        """The oldest complete segment (sealing the open one if nothing else is pending)."""
        if not self.pending:
            self.seal()
        return self.pending[0] if self.pending else None

    def read(self, segment: Segment) -> list[UsageRecord]:
        data = segment.path.read_bytes()
        records, bad = decode_lines(data)
        if bad:
            self.stats.torn_lines += bad
            log.error("spool segment %s: %d unreadable line(s) skipped (torn by a crash?)", segment.path, bad)
        return records

    def done(self, segment: Segment, replayed: int) -> None:
        """The segment's records are in the database: delete it."""
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        if self.pending and self.pending[0] is segment:
            self.pending.pop(0)
        else:
            self.pending = [s for s in self.pending if s is not segment]
        self._bytes -= segment.size
        self.stats.replayed_records += replayed
        self.stats.segments_done += 1
        owner = segment.owner_dir
        if owner != self.dir and not any(s.owner_dir == owner for s in self.pending):
            self._release_adopted(owner)

    # ------------------------------------------------------------------ orphans
    def adopt_orphans(self) -> int:
        """Take over spool directories of processes that are gone; returns how many."""
        adopted = 0
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry == self.dir or entry in self._adopted_locks or not entry.is_dir():
                continue
            lock_path = entry / "lock"
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # its owner is alive
                continue
            segments = []
            for path in sorted(entry.iterdir()):
                if path.suffix in (".seg", ".open"):
                    size = path.stat().st_size
                    segments.append(Segment(path, size, entry))
            if not segments:
                shutil.rmtree(entry, ignore_errors=True)
                os.close(fd)
                continue
            self._adopted_locks[entry] = fd
            # older than anything of ours: replay first, in their own order
            insert_at = sum(1 for s in self.pending if s.owner_dir != self.dir)
            self.pending[insert_at:insert_at] = segments
            self._bytes += sum(s.size for s in segments)
            self.stats.adopted_dirs += 1
            adopted += 1
            log.warning(
                "adopted spool %s (%d segment(s), %d bytes) left by a stopped worker",
                entry.name,
                len(segments),
                sum(s.size for s in segments),
            )
        return adopted

    def _release_adopted(self, owner: Path) -> None:
        fd = self._adopted_locks.pop(owner, None)
        shutil.rmtree(owner, ignore_errors=True)
        if fd is not None:
            os.close(fd)

    # ------------------------------------------------------------------ lookups
    def find(self, request_id: str) -> UsageRecord | None:
        """Scan every spool directory on this host for one record (the slow path of GET /v1/usage)."""
        needle = orjson.dumps(request_id)
        try:
            dirs = sorted(self.root.iterdir())
        except FileNotFoundError:
            return None
        for entry in dirs:
            if not entry.is_dir():
                continue
            try:
                files = sorted(entry.iterdir(), reverse=True)  # newest first
            except FileNotFoundError:
                continue
            for path in files:
                if path.suffix not in (".seg", ".open"):
                    continue
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                pos = data.find(needle)
                if pos < 0:
                    continue
                start = data.rfind(b"\n", 0, pos) + 1
                end = data.find(b"\n", pos)
                line = data[start : end if end >= 0 else len(data)]
                header_end = data.find(b"\n")
                records, _ = decode_lines(data[: header_end + 1] + line + b"\n")
                for rec in records:
                    if rec.request_id == request_id:
                        return rec
        return None

    def iter_dirs(self) -> Iterator[Path]:
        yield self.dir
        yield from self._adopted_locks

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Seal the open segment; remove our directory if nothing is left in it."""
        self.seal()
        for owner in list(self._adopted_locks):
            if not any(s.owner_dir == owner for s in self.pending):
                self._release_adopted(owner)
        ours = [s for s in self.pending if s.owner_dir == self.dir]
        if not ours:
            shutil.rmtree(self.dir, ignore_errors=True)
        # releasing the locks lets the next process adopt whatever is left
        for fd in self._adopted_locks.values():
            os.close(fd)
        self._adopted_locks.clear()
        os.close(self._lock_fd)
