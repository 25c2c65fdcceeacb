"""The data a run was trained on, as its run folder records it (``data.json``): the dataset's
name, its absolute location and the size and MD5 of every file the loader reads.

With it a run folder is enough: resume, eval and diagnose find the data without
``--data-dir``, and data that moved or changed stops them with one line saying what differs::

    record = make_record(cfg, root)                    # right after loading from root
    root = check_record(record, cfg, data_dir, where)  # before loading it again

The MD5s that :func:`classlab.data.base.read_checked` computed while loading are reused
(CIFAR-10's 180 MB are not read a second time at the start of a run); other files are hashed
here, at about 0.35 GB/s on this project's CPU.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from classlab.config import DataConfig
from classlab.data import base, cifar
from classlab.data.base import DataError, default_data_dir
from classlab.data.imagefolder import image_files, visible_dirs

# dataset -> its releases in the order the loader tries them: (folder, files it reads)
_RELEASES: dict[str, list[tuple[str, list[str]]]] = {
    "cifar10": [
        (cifar.PY_FOLDER, [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH, "batches.meta"]),
        (cifar.BIN_FOLDER, [*(f"{b}.bin" for b in cifar.TRAIN_BATCHES),
                            f"{cifar.TEST_BATCH}.bin", "batches.meta.txt"]),
    ],
    "cifar100": [
        (cifar.C100_PY_FOLDER, ["train", "test", "meta"]),
        (cifar.C100_BIN_FOLDER, ["train.bin", "test.bin", "fine_label_names.txt"]),
    ],
}
_SHOWN = 3  # differences named in the one-line error; the rest are counted


def resolve_root(cfg: DataConfig, root: Path | None = None) -> Path:
    """The absolute folder :func:`classlab.data.load_splits` reads: ``root``, else
    ``data.dir``, else ``$CLASSLAB_DATA`` or ``~/.cache/classlab``."""
    if root is None:
        root = Path(cfg.dir).expanduser() if cfg.dir else default_data_dir()
    return Path(os.path.abspath(Path(root).expanduser()))


def _base(name: str, root: Path) -> Path:
    # The CIFAR loaders also accept the release folder itself (.../cifar-10-batches-bin).
    folders = [f for f, _ in _RELEASES.get(name, [])]
    return root.parent if root.name in folders and root.is_dir() else root


def dataset_files(cfg: DataConfig, root: Path) -> list[str]:
    """The files (relative to :func:`_base` of ``root``, POSIX style) that the loader of
    ``cfg.name`` reads there; [] when there are none (synthetic data, or nothing there)."""
    root = _base(cfg.name, root)
    if cfg.name in _RELEASES:
        for folder, names in _RELEASES[cfg.name]:
            if (root / folder).is_dir():  # the first release present is the one loaded
                return [f"{folder}/{n}" for n in names if (root / folder / n).is_file()]
        return []
    if cfg.name == "imagefolder":
        files = []
        for split in ("train", "test", "val"):
            if (root / split).is_dir():
                files += [p.relative_to(root).as_posix() for d in visible_dirs(root / split)
                          for p in image_files(d)]
        return files
    return []


def _md5(path: Path) -> str:
    st = path.stat()
    known = base.VERIFIED.get(str(path.resolve()))
    if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
        return known[2]
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):  # 1 MiB at a time: image folders can be large
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(root: Path, names: list[str]) -> dict[str, dict]:
    try:
        return {n: {"bytes": (root / n).stat().st_size, "md5": _md5(root / n)} for n in names}
    except OSError as e:
        raise DataError(f"{e.filename}: cannot read: {e.strerror or e}") from None


def make_record(cfg: DataConfig, root: Path) -> dict:
    """``data.json`` of a run whose data was just loaded from ``root``."""
    root = _base(cfg.name, resolve_root(cfg, root))
    names = dataset_files(cfg, root)
    return {"dataset": cfg.name, "path": str(root) if names else None,
            "files": _fingerprint(root, names)}


def check_record(record: dict | None, cfg: DataConfig, data_dir: Path | None,
                 where: str) -> Path:
    """The folder to load the run's data from: ``data_dir`` when given, else the recorded
    path. Raises a one-line DataError when the data is not there or its files differ from
    the record (``where``: the record's file, named in the message). Without a record (a
    run from before records, or synthetic data) the usual resolution applies."""
    if not record or not record.get("files"):
        return resolve_root(cfg, data_dir)
    recorded = Path(record["path"])
    root = _base(cfg.name, resolve_root(cfg, data_dir)) if data_dir is not None else recorded
    names = dataset_files(cfg, root)
    dataset = record.get("dataset", cfg.name)
    if not names:
        raise DataError(_missing(dataset, root, recorded, where, data_dir is not None))
    differences = _differences(record["files"], _fingerprint(root, names))
    if differences:
        shown = "; ".join(differences[:_SHOWN])
        more = f" and {len(differences) - _SHOWN} more" if len(differences) > _SHOWN else ""
        raise DataError(f"{root}: the {dataset} data differs from what this run was trained on "
                        f"({shown}{more}; recorded in {where}: {recorded}); put the original "
                        "files back, or pass --data-dir with a copy of them")
    return root


def _missing(dataset: str, root: Path, recorded: Path, where: str, given: bool) -> str:
    if given:
        return (f"{root}: no {dataset} data there (this run was trained on the data recorded "
                f"in {where}: {recorded}); pass --data-dir with the folder holding it")
    return (f"{recorded}: the {dataset} data this run was trained on is no longer there "
            f"(recorded in {where}); moved? pass --data-dir with its new location")


def _differences(recorded: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """What differs, file by file: missing, new, other size, other contents."""
    out = [f"{n} missing" for n in recorded if n not in current]
    out += [f"{n} is new" for n in current if n not in recorded]
    for n in recorded.keys() & current.keys():
        was, now = recorded[n], current[n]
        if was.get("bytes") != now["bytes"]:
            out.append(f"{n} has {now['bytes']:,} bytes, recorded {was.get('bytes', 0):,}")
        elif was.get("md5") != now["md5"]:
            out.append(f"{n} has other contents (MD5 {now['md5'][:8]}, recorded "
                       f"{str(was.get('md5'))[:8]})")
    return sorted(out)
