"""Atomic files (text, JSON, PNG figures), run-folder creation and the source commit."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any


class RunDirError(RuntimeError):
    """A run folder that cannot be created or is not a run folder (one-line message)."""


def is_run_folder(path: str | Path) -> bool:
    """A folder holding a config.yaml: a run (or a prepared grid point)."""
    return (Path(path) / "config.yaml").is_file()


def run_folder(path: str | Path, needs: str = "config.yaml") -> Path:
    """``path`` when it is a run folder, else a one-line RunDirError saying why not. The one
    test every command makes: a folder holding ``needs`` (config.yaml, what makes a folder a
    run folder; ``last.pt`` for the commands that load the weights and nothing else)."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: not a run folder (no such folder)")
    if not (path / needs).is_file():
        raise RunDirError(f"{path}: not a run folder (no {needs})")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Temporary file in the same folder, flush + fsync, then rename (atomic on POSIX). If any
    step fails (disk full, permissions) the temporary file is removed and ``path`` is intact.
    """
    path = Path(path)
    try:  # keep the mode of the file being replaced; a new file gets what open() would give
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _chmod_fd(f.fileno(), mode)  # mkstemp makes 0600 files: others could not read them
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _journal_file(path)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None:  # write()/fsync() name no file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- all or nothing
# The files a command writes (diagnose, report, compare) appear together or not at all: inside
# ``all_or_nothing()`` every atomic write first keeps the file it replaces (a hard link: no
# space needed) and every folder made is noted; if the block raises (disk full, Ctrl-C, any
# error) each written file is put back as it was, new files and folders are removed, so the
# previous complete output stays. Readers inside the block see the new files at once.

_JOURNAL: contextvars.ContextVar[list | None] = contextvars.ContextVar("classlab_journal",
                                                                      default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Every file written (atomically) and folder made (:func:`make_folder`) in the body is
    kept only if the body finishes; otherwise the previous files are put back. Nested blocks
    belong to the outermost one."""
    if _JOURNAL.get() is not None:
        yield
        return
    journal: list[tuple[str, Path, Path | None]] = []
    token = _JOURNAL.set(journal)
    try:
        yield
    except BaseException:
        _roll_back(journal)
        raise
    else:
        for kind, _, backup in journal:
            if kind == "file" and backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)
    finally:
        _JOURNAL.reset(token)


def _journal_file(path: Path) -> None:
    """Inside all_or_nothing: keep the file ``path`` holds now (once per path) before it is
    replaced."""
    journal = _JOURNAL.get()
    if journal is None or any(p == path for kind, p, _ in journal if kind == "file"):
        return
    backup = None
    if path.is_file():
        backup = _keep_copy(path)
    journal.append(("file", path, backup))


def _keep_copy(path: Path) -> Path:
    for _ in range(100):
        backup = path.with_name(f".{path.name}.{secrets.token_hex(4)}.bak")
        try:
            os.link(path, backup)
            return backup
        except FileExistsError:
            continue
        except OSError as e:  # no hard links here (some network / FAT file systems): copy
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP,
                               errno.EMLINK):
                raise
            shutil.copy2(path, backup)
            return backup
    raise FileExistsError(errno.EEXIST, "no free backup name", str(path))


def _roll_back(journal: list[tuple[str, Path, Path | None]]) -> None:
    for kind, path, backup in reversed(journal):
        with contextlib.suppress(OSError):
            if kind == "dir":
                path.rmdir()  # only when empty: files not written here stay
            elif backup is not None:
                os.replace(backup, path)
            else:
                path.unlink(missing_ok=True)


def make_folder(path: Path) -> Path:
    """``mkdir -p``; inside :func:`all_or_nothing` the folders it made are removed again when
    the block fails."""
    path = Path(path)
    made = []
    for folder in [*reversed(path.parents), path]:
        if not folder.exists():
            folder.mkdir(exist_ok=True)
            made.append(folder)
    journal = _JOURNAL.get()
    if journal is not None:
        journal += [("dir", folder, None) for folder in made]
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, and put it back at once
    os.umask(mask)
    return mask


def _chmod_fd(fd: int, mode: int) -> None:
    try:
        os.fchmod(fd, mode)
    except OSError:  # filesystems without POSIX modes: keep whatever mkstemp gave
        pass


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not supported on every filesystem, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_json_object(path: Path) -> dict | None:
    """A JSON object file as a dict; None when it is absent, unreadable, not JSON or not an
    object (for readers to whom a damaged file is the same as none: report, card, predict)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """A matplotlib Figure as a PNG, written atomically (the one way figures are saved).

    Figures are made with ``matplotlib.figure.Figure`` (never pyplot), so there is no
    global figure to close and no backend to choose."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == PNG_MAGIC
    except OSError:
        return False


def check_output_file(path: Path, option: str, *, suffix: str, force: bool = False,
                      ours: Callable[[Path], bool] = is_png, what: str = "PNG") -> Path:
    """``path`` when a command may write it (``option`` names where it came from, e.g.
    ``--plot``), else a one-line RunDirError: the name must end in ``suffix``; it must not
    be a folder, nor lie under a file; an existing file is replaced only when ``ours`` says
    it is what the command writes (a PNG), or with ``force``. Checked before any work, so
    a typo never costs a run, nor overwrites a file of the user's (a checkpoint, a CSV)."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{option} {path}: is a folder; give a file name, e.g. "
                          f"{path / ('plot' + suffix)}")
    if path.suffix.lower() != suffix:
        raise RunDirError(f"{option} {path}: the file name must end in {suffix}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"{option} {path}: {parent} is a file, not a folder")
            break
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise RunDirError(f"{option} {path}: exists and is not a regular file")
        if not force and not ours(path):
            raise RunDirError(f"{option} {path}: exists and is not a {what}; give another "
                              "file name, or --force to replace it")
    return path


def make_run_dir(out: Path, name: str) -> Path:
    """Create ``out/<name>-<YYYYmmdd-HHMMSS>`` exclusively; a clash gets ``-2``, ``-3``...

    ``mkdir`` without ``exist_ok`` is atomic, so two processes started in the same second
    with the same name never share a folder.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create output folder {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise RunDirError(f"output folder {out} is not writable")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        candidate = out / (f"{name}-{stamp}" + (f"-{i}" if i > 1 else ""))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"cannot create run folder in {out}: {e.strerror or e}") from None
    raise RunDirError(f"too many runs named {name!r} in {out} this second")


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the source tree classlab runs from (or of cwd), if it is a git checkout."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")
