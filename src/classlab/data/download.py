"""Download a ``.tar.gz`` release: checked, unpacked safely, moved into place atomically."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath

from classlab.data.base import DataError, read_checked


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract ``tar`` into ``dest``, refusing anything but plain files and folders inside it.

    All members are checked before anything is written, so a rejected archive leaves
    ``dest`` untouched. Rejected: absolute paths (POSIX or Windows style), any ``..``
    component, symlinks, hardlinks, devices, fifos and other special members.
    """
    dest = Path(dest)
    root = dest.resolve()
    members = tar.getmembers()
    for m in members:
        name = m.name
        why = None
        if not name:
            why = "empty name"
        elif name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
            why = "absolute path"
        elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
            why = "'..' in path"
        elif m.issym() or m.islnk():
            why = "link"
        elif not (m.isfile() or m.isdir()):
            why = "special file (device, fifo, ...)"
        elif not (root / name).resolve().is_relative_to(root):
            why = "outside the destination"
        if why:
            raise DataError(f"unsafe archive member {name!r}: {why}; refusing to extract")
    dest.mkdir(parents=True, exist_ok=True)
    if hasattr(tarfile, "data_filter"):  # second line of defence where Python has it
        tar.extractall(dest, members=members, filter="data")
    else:  # pragma: no cover - old Pythons; our checks above already ran
        tar.extractall(dest, members=members)


def _fetch(url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` into the file ``dest``; returns the MD5 of what arrived."""
    digest = hashlib.md5()
    try:
        with open(dest, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            while chunk := r.read(1 << 20):  # 1 MiB at a time: ~170 MB archives
                digest.update(chunk)
                f.write(chunk)
    except urllib.error.HTTPError as e:
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"cannot download {url}: {e.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, cut
        # transfers (IncompleteRead), malformed URLs, a full disk
        raise DataError(f"cannot download {url}: {e}") from None
    return digest.hexdigest()


def _unpack(archive: Path, into: Path, url: str, folder: str,
            file_md5s: Mapping[str, str]) -> Path:
    """Extract ``archive`` safely into ``into`` and check every file of ``folder`` there."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            safe_extract(tar, into)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{url}: cannot unpack the archive: {e}") from None
    unpacked = into / folder
    if not unpacked.is_dir():
        raise DataError(f"{url}: the archive holds no {folder} folder")
    for name in file_md5s:
        read_checked(unpacked / name, file_md5s)
    return unpacked


def _make_root(root: Path) -> bool:
    """Create ``root`` if needed; True when it was created here (and may be removed)."""
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {root}: {e.strerror or e}") from None
    return created


def download_release(
    root: Path,
    url: str,
    *,
    folder: str,
    archive_md5: str,
    file_md5s: Mapping[str, str],
    timeout: float = 60,
    tag: str = "data",
) -> Path:
    """Download a ``.tar.gz`` release holding ``folder/`` and unpack it into ``root/folder``.

    The archive goes to a temp file inside ``root`` and is checked against ``archive_md5``;
    it is unpacked into a temp folder inside ``root``, each batch is checked against
    ``file_md5s``, and only then is the folder renamed into place (atomic on one file
    system). On any failure everything created is removed (``root`` too if it was created
    here and is empty), so no partial data folder is ever left. ``timeout`` is in seconds per
    network operation. Returns the data folder.
    """
    root = Path(root)
    final = root / folder
    if final.exists():
        raise DataError(f"{final} already exists; delete it to download again")
    created_root = _make_root(root)
    tmp_archive: Path | None = None
    tmp_dir: Path | None = None
    ok = False
    try:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{tag}-", suffix=".tar.gz.part", dir=root)
            os.close(fd)
        except OSError as e:
            raise DataError(f"cannot write into {root}: {e.strerror or e}") from None
        tmp_archive = Path(tmp_name)
        got = _fetch(url, tmp_archive, timeout)
        if got != archive_md5:
            raise DataError(f"{url}: archive checksum mismatch (got {got}, expected "
                            f"{archive_md5}); download interrupted or wrong file")
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{tag}-extract-", dir=root))
        unpacked = _unpack(tmp_archive, tmp_dir, url, folder, file_md5s)
        try:
            os.rename(unpacked, final)
        except OSError as e:
            raise DataError(f"cannot move the data into {final}: {e.strerror or e}") from None
        ok = True
        return final
    finally:
        if tmp_archive is not None:
            tmp_archive.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if not ok and created_root:
            try:
                root.rmdir()  # only succeeds when empty: never removes anything else
            except OSError:
                pass
