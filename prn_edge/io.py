"""Atomic file output: a reader sees the old file or the complete new one, never half of one."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from prn_edge.errors import PRNError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.

    Raises:
        PRNError: the folder does not exist or is not writable.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise PRNError(f"{folder}: output folder does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise PRNError(f"{folder}: cannot write here ({exc.strerror})") from exc
    try:
        # mkstemp makes the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename and exc.errno:
            # A write() on a full disk names no file: name the one being written, so the
            # user's one-line error says where (run_cli prints OSError.filename).
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise
    fsync_dir(folder)


def remove_stale_temporaries(folder: str | os.PathLike, *names: str) -> list[Path]:
    """Remove the temporaries :func:`atomic_write` leaves when its process is killed (``.NAME.*.tmp``).

    Only for a folder one process owns (a training run's ``--out``); returns what was removed.
    """
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    # Make the rename itself durable (POSIX); not possible on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_output_dir(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail before any work if the folder ``out`` cannot be written, without creating it.

    ``os.access`` is not enough (root passes it everywhere, read-only mounts fool it), so a
    temporary entry is created and removed in ``out`` or in its nearest existing parent.

    Returns:
        ``out`` as a Path (user-expanded).

    Raises:
        PRNError: ``out`` (or a parent) is a file, or the folder is not writable.
    """
    out = Path(out).expanduser()
    probe_dir = out
    while not probe_dir.exists() and probe_dir.parent != probe_dir:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        where = "it" if probe_dir == out else f"{probe_dir}, a parent of it,"
        raise PRNError(f"{out}: cannot write here: {where} exists and is not a folder ({flag})")
    try:
        fd, name = tempfile.mkstemp(prefix=".prn-probe-", dir=probe_dir)
    except OSError as exc:
        raise PRNError(f"{out}: cannot write here: {probe_dir} is not writable "
                       f"({exc.strerror or exc}); choose another {flag}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return out


def make_output_dir(out: str | os.PathLike, flag: str = "--out") -> Path:
    """:func:`check_output_dir`, then create the folder (and its parents).

    Raises:
        PRNError: as :func:`check_output_dir`, or the folder cannot be created.
    """
    out = check_output_dir(out, flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PRNError(f"{out}: cannot create the output folder ({exc.strerror or exc}); choose another "
                       f"{flag}") from exc
    return out
