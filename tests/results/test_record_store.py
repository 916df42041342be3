"""The record store survives damage and concurrent writers: appends are all-or-nothing, never
rewrite the file, and a damaged line costs only that line, reported with its number."""
from __future__ import annotations

import errno
import json
import multiprocessing
import os

import pytest

from orl_bench import io as orl_io
from orl_bench.results.records import append_records, load_records, records_path

WRITERS, PER_WRITER = 4, 200


def record(writer: int, i: int) -> dict:
    return {"task": "voc07_svm", "metric": "mAP", "value": float(i), "method": f"w{writer}", "artifact_sha256": "x",
            "recipe": "tiny", "dataset": "d", "config_hash": "c", "git_revision": "g", "device": "cpu",
            "wall_time_s": 0.0, "timestamp": "t", "note": "y" * (writer * 500)}  # lines of unequal length


def _append_many(workdir: str, writer: int, start: multiprocessing.Event) -> None:
    start.wait()
    for i in range(PER_WRITER):
        append_records(workdir, [record(writer, i)])


def test_concurrent_appenders_lose_and_interleave_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # real, separate processes
    start = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, start)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    lines = records_path(tmp_path).read_text().splitlines()
    assert len(lines) == WRITERS * PER_WRITER
    rows = [json.loads(line) for line in lines]  # every line whole
    for w in range(WRITERS):  # each writer's rows all there, in its own order
        assert [r["value"] for r in rows if r["method"] == f"w{w}"] == [float(i) for i in range(PER_WRITER)]


def test_an_append_does_not_rewrite_the_file(tmp_path):
    append_records(tmp_path, [record(0, 0)])
    path = records_path(tmp_path)
    before, inode = path.read_bytes(), path.stat().st_ino
    append_records(tmp_path, [record(0, 1), record(0, 2)])
    assert path.stat().st_ino == inode and path.read_bytes().startswith(before)
    assert len(load_records(tmp_path)) == 3


def test_damaged_truncated_and_foreign_lines_are_skipped_and_named(tmp_path, capsys):
    append_records(tmp_path, [record(0, 0)])
    path = records_path(tmp_path)
    with open(path, "a") as f:
        f.write("\x00\x00garbage\n")  # damaged
        f.write('["a", "list"]\n')  # JSON, but no record
        f.write('{"task": "voc07_svm"}\n')  # an object lacking the record fields
        f.write('{"task": "voc07_svm", "met')  # a writer killed mid-line: no newline
    append_records(tmp_path, [record(0, 1)])  # starts on a fresh line, so only the torn line is lost
    rows = load_records(tmp_path)
    assert [r["value"] for r in rows] == [0.0, 1.0]
    warnings = capsys.readouterr().err.splitlines()
    prefix = f"orl-bench: warning: skipped a damaged line: {path}:"
    assert all(w.startswith(prefix) for w in warnings)
    assert [w.removeprefix(prefix).split(":")[0] for w in warnings] == ["2", "3", "4", "5"]
    assert "not JSON" in warnings[0] and "list" in warnings[1] and "lacks" in warnings[2]


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    append_records(tmp_path, [record(0, 0)])
    path = records_path(tmp_path)
    before = path.read_bytes()
    real_pwrite = os.pwrite

    def disk_full(fd, data, offset):  # half the bytes land, then the disk is full
        real_pwrite(fd, data[:len(data) // 2], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(orl_io.os, "pwrite", disk_full)
    with pytest.raises(OSError, match="No space left"):
        append_records(tmp_path, [record(0, 1), record(0, 2)])
    assert path.read_bytes() == before
