"""The on-disk spool: order, bounds, torn lines, orphans left by dead workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ethereal.metering.spool import Spool, SpoolFull, decode_lines, encode
from ethereal.storage.records import UsageRecord


def rec(i: int, **kw: object) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{i:024d}",
        key_id="key_a",
        credential="default",
        route="messages",
        model="claude-sonnet-4-5-20250929",
        status=200,
        stream=bool(i % 2),
        input_tokens=i,
        output_tokens=2 * i,
        cost_micro=i * 7,
        started_at=1e9 + i,
        ended_at=1e9 + i + 1,
        **kw,
    )  # type: ignore[arg-type]


def drain(spool: Spool) -> list[UsageRecord]:
    out = []
    while (seg := spool.next_segment()) is not None:
        records = spool.read(seg)
        out.extend(records)
        spool.done(seg, len(records))
    return out


def test_roundtrip_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**8, segment_bytes=4096)
    written = [rec(i) for i in range(500)]
    for i in range(0, 500, 37):
        spool.append(written[i : i + 37])
    assert len(spool.pending) > 3  # rotated
    assert drain(spool) == written
    assert spool.empty and spool.bytes == 0
    spool.close()
    assert not any(tmp_path.iterdir())  # nothing left behind


def test_bounded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=20_000, segment_bytes=4096)
    n = 0
    with pytest.raises(SpoolFull):
        while True:
            spool.append([rec(n)])
            n += 1
    assert spool.bytes <= 20_000
    assert drain(spool) == [rec(i) for i in range(n)]
    spool.append([rec(1)])  # room again
    spool.close()


def test_torn_last_line_is_skipped() -> None:
    data = encode([rec(1), rec(2)])
    records, bad = decode_lines(data + data[: len(data) // 3])
    assert records[:2] == [rec(1), rec(2)] and bad == 1


def test_schema_change_tolerated() -> None:
    import orjson

    header = (
        orjson.dumps(
            {
                "spool": 1,
                "columns": [
                    "request_id",
                    "key_id",
                    "credential",
                    "route",
                    "model",
                    "status",
                    "stream",
                    "some_future_column",
                ],
            }
        )
        + b"\n"
    )
    line = orjson.dumps(["req_x", None, None, "messages", None, 200, False, 42]) + b"\n"
    records, bad = decode_lines(header + line)
    assert bad == 0 and records[0].request_id == "req_x" and records[0].web_search_requests == 0


def test_orphans_are_adopted_first_and_removed(tmp_path: Path) -> None:
    dead = Spool(tmp_path, max_bytes=10**8, segment_bytes=2048)
    old = [rec(i) for i in range(100)]
    dead.append(old)
    # simulate a crash: the open segment stays, the lock is released by the process dying
    os.close(dead._lock_fd)
    live = Spool(tmp_path, max_bytes=10**8)
    assert live.stats.adopted_dirs == 1
    new = [rec(i) for i in range(100, 110)]
    live.append(new)
    assert drain(live) == old + new
    assert not dead.dir.exists()
    live.close()


def test_live_spools_are_not_adopted(tmp_path: Path) -> None:
    a = Spool(tmp_path, max_bytes=10**8)
    a.append([rec(1)])
    b = Spool(tmp_path, max_bytes=10**8)
    assert b.stats.adopted_dirs == 0 and b.empty
    assert b.find(rec(1).request_id) == rec(1)  # but lookups see every worker's spool
    assert b.find("req_nothere") is None
    a.close()
    b.close()


def test_segments_from_before_error_message_still_replay(tmp_path: Path) -> None:
    """A segment written before records carried ``error_message`` (its header names the columns
    it has) replays with the message empty; a new one keeps it."""
    import orjson
    from ethereal.storage.records import USAGE_COLUMNS

    old_columns = [c for c in USAGE_COLUMNS if c != "error_message"]
    old = rec(3, error_type="rate_limit_error")
    segment = orjson.dumps({"spool": 1, "columns": old_columns}) + b"\n"
    segment += orjson.dumps([getattr(old, c) for c in old_columns]) + b"\n"
    records, bad = decode_lines(segment)
    assert bad == 0 and records == [old] and records[0].error_message is None
    said = rec(4, error_type="invalid_request_error", error_message="max_tokens: Field required")
    assert decode_lines(encode([said]))[0] == [said]
    spool = Spool(tmp_path, max_bytes=10**6)
    spool.append([said])
    assert drain(spool) == [said]
    spool.close()
