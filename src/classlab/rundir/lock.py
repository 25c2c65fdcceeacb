"""One writer per run folder: a process that trains, diagnoses or reports into a run folder
holds an exclusive lock on it for as long as it writes.

The lock is ``flock(2)`` on the folder's lock file (:attr:`RunFiles.lock`): the operating
system drops it when the process ends, however it ends (SIGKILL, a crash, a power cut of a
local disk), so a lock is never stale and needs no clean-up. The file also says who holds it
(pid, host, command, since when), for the one-line refusal a second process gets.

Within one process the lock is re-entrant (the training flow holds it and then diagnoses and
reports under it). Read-only commands (``runs``, ``table``, ``compare``, ``eval``) take no
lock.

Network file systems: ``flock`` is local to one machine on many of them (NFSv3 without lockd,
SMB, sshfs and other FUSE mounts), so two machines writing one folder on such a share are not
kept apart; :func:`network_filesystem` names the file system so that the caller can say so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from classlab.rundir.files import RunDirError
from classlab.rundir.layout import RunFiles

# File systems on which flock may not exclude a process on another machine.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ceph",
              "glusterfs", "lustre", "fuse.s3fs", "fuse.gcsfuse")

POLL_SECONDS = 1.0  # how often a waiting process tries the lock again

_HELD: dict[str, tuple[int, int]] = {}  # real path of the lock file -> (fd, depth) held here


class RunLocked(RunDirError):
    """Another process holds the run folder (one line naming it)."""


def holder(run_dir: str | Path) -> dict | None:
    """Who holds ``run_dir``'s lock now ({"pid", "host", "command", "since"}), None when
    nobody does (or the folder has no lock file). Takes and drops the lock to find out."""
    path = RunFiles(run_dir).lock
    if not path.is_file() or os.path.realpath(path) in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            return None  # free (closing the fd below releases it again)
        return _read_info(fd) or {"pid": "?", "host": "?", "command": "?", "since": "?"}
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(run_dir: str | Path, wait: float = 0.0, command: str | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the body. Held elsewhere: wait up to ``wait`` seconds
    (``float("inf")``: until it is free), then raise :class:`RunLocked` naming the holder.
    Re-entrant within this process."""
    path = RunFiles(run_dir).lock
    key = os.path.realpath(path)
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _release(key)
        return
    fd = _acquire(Path(run_dir), path, wait)
    _HELD[key] = (fd, 1)
    try:
        _write_info(fd, command)
        yield
    finally:
        _release(key)


def network_filesystem(run_dir: str | Path) -> str | None:
    """The file system type of ``run_dir`` when it is one where :func:`hold` may not keep
    two machines apart (see :data:`NETWORK_FS`), else None (also where it cannot be told)."""
    try:
        target = os.path.realpath(run_dir)
        best, kind = "", None
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
        return kind if kind in NETWORK_FS else None
    except OSError:
        return None


# --------------------------------------------------------------------------- internals


def _acquire(run_dir: Path, path: Path, wait: float) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"{run_dir}: cannot open its lock file {path.name}: "
                          f"{e.strerror or e}") from None
    deadline = time.monotonic() + wait
    told = False
    while not _try_lock(fd):
        info = _read_info(fd)
        if time.monotonic() >= deadline:
            os.close(fd)
            raise RunLocked(f"{run_dir}: in use by {_describe(info)}; wait for it to end or "
                            "stop it (one process writes a run folder at a time)")
        if not told:
            print(f"{run_dir}: in use by {_describe(info)}; waiting for it", flush=True)
            told = True
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    return fd


def _try_lock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _release(key: str) -> None:
    fd, depth = _HELD[key]
    if depth > 1:
        _HELD[key] = (fd, depth - 1)
        return
    del _HELD[key]
    with contextlib.suppress(OSError):  # the holder's record goes; the file stays (no race)
        os.ftruncate(fd, 0)
    os.close(fd)  # releases the flock


def _write_info(fd: int, command: str | None) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": command or shlex.join(["classlab", *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):  # who holds it is a courtesy; the lock is what counts
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)


def _read_info(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data.decode())
        return info if isinstance(info, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _describe(info: dict | None) -> str:
    if not info:
        return "another process"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"({info.get('command', '?')}) since {info.get('since', '?')}")
