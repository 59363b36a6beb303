"""Small file-system helpers that keep user data safe: atomic writes and disk-space checks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: Path, durable: bool = True, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temp path beside path; on success fsync it and rename it over path.

    Readers see the old file or the new one, never half of one. If the write fails (a full disk,
    an exception) the temp file is removed, so a failed save leaves no litter and the old file
    stays as it was. Only a kill can leave a '.name.tmp-PID' behind; remove_stale_temp_files
    clears those. durable=False skips the fsyncs, for caches that recompute a torn entry anyway.
    make_parents=False writes only into a folder that still exists (FileNotFoundError otherwise):
    a report for a user's folder must never re-create the folder the user just removed.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # a failed write() names no file
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, durable: bool = True, make_parents: bool = True) -> None:
    """Write bytes to path atomically (see atomic_file)."""
    with atomic_file(path, durable, make_parents) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def fsync_dir(directory: Path) -> None:
    # The rename is only durable after a power cut once the directory entry itself is synced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stat_ok(check, path: Path) -> bool:
    # A folder we may not look into (another user's home, a locked mount) is simply not a match.
    try:
        return check(Path(path))
    except OSError:
        return False


def safe_is_file(path: Path) -> bool:
    return _stat_ok(Path.is_file, path)


def safe_is_dir(path: Path) -> bool:
    return _stat_ok(Path.is_dir, path)


def safe_exists(path: Path) -> bool:
    return _stat_ok(Path.exists, path)


def remove_stale_temp_files(directory: Path) -> None:
    """Delete our own leftover '.name.tmp-PID' files from a killed write (never user files)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(".") and ".tmp-" in entry.name and entry.is_file():
            entry.unlink(missing_ok=True)


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds path (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"
