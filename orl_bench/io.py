"""Atomic file writes and hashing: nothing a run writes is ever left half-written, and a file
written from the same content has the same bytes (artifacts are keyed by their sha256)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import secrets
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, fsync it, then rename into place.

    The file gets the permissions a plain open() would give (0666 less the umask), so artifacts and
    tables on a shared filesystem are as readable as the user's other files; tempfile.mkstemp's
    0600 would hide them from the group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        write(tmp)
        # A writer may replace the file rather than write into it (safetensors' save_file puts a
        # new 0600 file in its place): give it back the mode the umask gave ours.
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on `path`.lock, serialising writers across processes.

    A POSIX record lock (fcntl.lockf), not flock: POSIX locks are what NFS (v3 with lockd, v4),
    GPFS and Lustre mounted with `flock` pass to the server, so writers on several hosts are
    serialised too. Mounted without cluster-wide locking (NFS `nolock`, Lustre `localflock` or
    no option) there is no guarantee across hosts: keep one work directory per host there.
    POSIX locks belong to the process, so this serialises processes, not threads of one.
    """
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows to a JSON-lines file: all rows land, or none do; the file is never rewritten.

    Under the lock the rows go out in one write at the end of the file. A write that fails part
    way (a full disk) is cut back to the old length. If an earlier writer died mid-line, the new
    rows start on a fresh line, so only that damaged line is lost (readers skip it, naming it).
    """
    path = Path(path)
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    with file_lock(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as open() does
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":
                data = b"\n" + data
            try:
                written = 0
                while written < len(data):  # a regular file takes it in one call; loop for the rule
                    written += os.pwrite(fd, data[written:], end + written)
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, parsed; any malformed line is an error (for files the
    project writes whole, atomically). Record stores are read with `read_jsonl_lenient`."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_jsonl_lenient(path: Path, valid: Callable[[Any], str | None] = lambda obj: None
                       ) -> tuple[list[dict], list[str]]:
    """The good lines of an append-only JSON-lines file, and a `PATH:LINE: why` note for each line
    skipped: one that is not JSON (truncated by a crash, damaged) or that `valid(obj)` rejects
    (it returns why)."""
    path = Path(path)
    rows: list[dict] = []
    skipped: list[str] = []
    if not path.exists():
        return rows, skipped
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                problem = valid(obj)
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                problem = f"not JSON ({e})"
            if problem:
                skipped.append(f"{path}:{number}: {problem}")
            else:
                rows.append(obj)
    return rows, skipped


def warn_skipped(skipped: list[str], shown: int = 10) -> None:
    """Report skipped lines on stderr, the first `shown` of them by name."""
    for note in skipped[:shown]:
        print(f"orl-bench: warning: skipped a damaged line: {note}", file=sys.stderr)
    if len(skipped) > shown:
        print(f"orl-bench: warning: ... and {len(skipped) - shown} more damaged lines", file=sys.stderr)


def save_npy(path: Path, array: Any) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, array)
    atomic_write(path, write)


def save_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
    """Arrays to an .npz that np.load reads, atomically and byte-reproducibly: np.savez stamps
    each member with the current time, so the same arrays saved twice would hash differently."""
    def write(tmp: Path) -> None:
        method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=method) as z:
            for name, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                info.external_attr = 0o644 << 16
                z.writestr(info, buffer.getvalue())
    atomic_write(path, write)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
