"""classlab.data on small generated CIFAR-10 look-alikes (never the real data, no internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from classlab import data
from classlab.config import DataConfig
from classlab.data import DataError, cifar, download

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
PER_BATCH = 20  # images per fake batch file: 100 train, 20 test


def _fake_batches(train_labels: np.ndarray | None = None, seed: int = 0) -> dict:
    """name -> (x uint8 [20,3,32,32], y int64 [20]); pixels (0,0,0:2) hold the image id."""
    rng = np.random.default_rng(seed)
    if train_labels is None:
        train_labels = rng.permutation(np.arange(5 * PER_BATCH) % 10)
    out = {}
    for b, name in enumerate([*TRAIN, "test_batch"]):
        x = rng.integers(0, 256, size=(PER_BATCH, 3, 32, 32), dtype=np.uint8)
        ids = b * PER_BATCH + np.arange(PER_BATCH)  # test ids: 100..119
        x[:, 0, 0, 0], x[:, 0, 0, 1] = ids % 256, ids // 256
        y = (train_labels[ids] if b < 5 else np.arange(PER_BATCH) % 10).astype(np.int64)
        out[name] = (x, y)
    return out


def _ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_bin(folder: Path, batches: dict) -> dict[str, str]:
    folder.mkdir(parents=True)
    for name, (x, y) in batches.items():
        rec = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(y), -1)], axis=1)
        (folder / f"{name}.bin").write_bytes(rec.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")  # blank line skipped
    return {f"{n}.bin": _md5(folder / f"{n}.bin") for n in batches}


def _write_py(folder: Path, batches: dict) -> dict[str, str]:
    folder.mkdir(parents=True)
    for name, (x, y) in batches.items():
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in y],
             b"data": x.reshape(len(y), -1), b"filenames": [b"f.png"] * len(y)}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {n: _md5(folder / n) for n in batches}


def _expected(batches: dict) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([batches[n][0] for n in TRAIN]),
            np.concatenate([batches[n][1] for n in TRAIN]))


@pytest.fixture
def bin_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    batches = _fake_batches()
    md5s = _write_bin(tmp_path / "cifar-10-batches-bin", batches)
    monkeypatch.setattr(cifar, "CIFAR10_BIN_MD5S", md5s)
    return tmp_path, batches


# --------------------------------------------------------------------------- readers


def test_read_bin_layout_labels_and_order(tmp_path: Path) -> None:
    batches = _fake_batches()
    folder = tmp_path / "cifar-10-batches-bin"
    md5s = _write_bin(folder, batches)
    x, y, xt, yt, classes = cifar.read_cifar10_bin(folder, md5s)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (100,) and y.dtype == torch.int64
    assert xt.shape == (20, 3, 32, 32) and yt.dtype == torch.int64
    assert classes == CLASSES
    ex, ey = _expected(batches)
    assert np.array_equal(x.numpy(), ex) and np.array_equal(y.numpy(), ey)
    assert np.array_equal(xt.numpy(), batches["test_batch"][0])
    # Read raw bytes by hand: image 3 of batch 2 is train image 23.
    raw = (folder / "data_batch_2.bin").read_bytes()
    rec = 3 * 3073
    assert y[23] == raw[rec]
    assert x[23, 0, 0, 0] == raw[rec + 1]  # R plane, row 0, col 0
    assert x[23, 1, 2, 5] == raw[rec + 1 + 1024 + 2 * 32 + 5]  # G plane, row 2, col 5
    assert x[23, 2, 31, 30] == raw[rec + 1 + 2048 + 31 * 32 + 30]  # B plane, row 31, col 30


def test_read_py_equals_bin(tmp_path: Path) -> None:
    batches = _fake_batches()
    md5_py = _write_py(tmp_path / "cifar-10-batches-py", batches)
    md5_bin = _write_bin(tmp_path / "cifar-10-batches-bin", batches)
    a = cifar.read_cifar10_py(tmp_path / "cifar-10-batches-py", md5_py)
    b = cifar.read_cifar10_bin(tmp_path / "cifar-10-batches-bin", md5_bin)
    assert a[4] == b[4] == CLASSES
    for ta, tb in zip(a[:4], b[:4], strict=True):
        assert ta.dtype == tb.dtype and torch.equal(ta, tb)
    assert _ids(a[0]) == list(range(100)) and _ids(a[2]) == list(range(100, 120))


def _py2_pickle(items: dict[str, object]) -> bytes:
    """A protocol-2 pickle as Python 2 cPickle wrote the real release: str keys and data,
    arrays via numpy.core.multiarray._reconstruct (a module numpy 2 renamed)."""
    def s(v: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: a Python 2 str
        return b"U" + bytes([len(v)]) + v if len(v) < 256 else b"T" + struct.pack("<I", len(v)) + v

    out = b"\x80\x02}("
    for key, v in items.items():
        out += s(key.encode())
        if isinstance(v, np.ndarray):  # uint8 [n, 3072]
            out += (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R("
                    b"K\x01M" + struct.pack("<H", v.shape[0]) + b"M\x00\x0c\x86"
                    b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNN"
                    b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(v.tobytes()) + b"tb")
        else:  # list of small ints or of str
            out += b"](" + b"".join(b"K" + bytes([e]) if isinstance(e, int) else s(e.encode())
                                    for e in v) + b"e"
    return out + b"u."


def test_read_py_python2_pickles(tmp_path: Path) -> None:
    batches = _fake_batches()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, (x, y) in batches.items():
        (folder / name).write_bytes(_py2_pickle({"data": x.reshape(len(y), -1),
                                                 "labels": [int(v) for v in y]}))
    (folder / "batches.meta").write_bytes(_py2_pickle({"label_names": CLASSES}))
    md5s = {n: _md5(folder / n) for n in batches}
    x, y, xt, yt, classes = cifar.read_cifar10_py(folder, md5s)
    ex, ey = _expected(batches)
    assert classes == CLASSES and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x.numpy(), ex) and np.array_equal(y.numpy(), ey)
    assert np.array_equal(yt.numpy(), batches["test_batch"][1])


def test_py_pickle_with_code_is_refused(tmp_path: Path) -> None:
    batches = _fake_batches()
    folder = tmp_path / "cifar-10-batches-py"
    md5s = _write_py(folder, batches)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Evil()}))
    with pytest.raises(DataError, match="batches.meta: not a CIFAR-10 pickle"):
        cifar.read_cifar10_py(folder, md5s)


def test_loader_finds_either_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _fake_batches()
    monkeypatch.setattr(cifar, "CIFAR10_PY_MD5S", _write_py(tmp_path / "p" / "cifar-10-batches-py",
                                                           batches))
    monkeypatch.setattr(cifar, "CIFAR10_BIN_MD5S",
                        _write_bin(tmp_path / "b" / "cifar-10-batches-bin", batches))
    cfg = DataConfig(val_split=0.0)
    a = data.load_splits(cfg, tmp_path / "p")
    b = data.load_splits(cfg, tmp_path / "b")
    c = data.load_splits(cfg, tmp_path / "b" / "cifar-10-batches-bin")  # the folder itself
    for s in (b, c):
        assert torch.equal(a.train_x, s.train_x) and torch.equal(a.test_y, s.test_y)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_checksum_mismatch_names_file(bin_root, damage: str) -> None:
    root, _ = bin_root
    path = root / "cifar-10-batches-bin" / "data_batch_3.bin"
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        data.load_splits(DataConfig(dir=str(root)))
    msg = str(e.value)
    assert str(path) in msg and "checksum mismatch" in msg and "\n" not in msg


def test_wrong_size_and_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    md5s = _write_bin(folder, _fake_batches())
    path = folder / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    md5s["test_batch.bin"] = _md5(path)  # checksum "right", size not whole records
    with pytest.raises(DataError, match=r"test_batch\.bin: wrong size"):
        cifar.read_cifar10_bin(folder, md5s)
    path.unlink()
    with pytest.raises(DataError, match=r"test_batch\.bin: missing"):
        cifar.read_cifar10_bin(folder, md5s)


def test_published_checksums_used_by_default(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _write_bin(folder, _fake_batches())
    with pytest.raises(DataError, match=r"data_batch_1\.bin: checksum mismatch"):
        cifar.read_cifar10_bin(folder)


def test_missing_data_names_folder(tmp_path: Path) -> None:
    root = tmp_path / "nothing here"
    with pytest.raises(DataError) as e:
        data.load_splits(DataConfig(dir=str(root)))
    msg = str(e.value)
    assert f"no CIFAR-10 under {root}" in msg
    assert str(root / "cifar-10-batches-py") in msg and str(root / "cifar-10-batches-bin") in msg
    assert "data.download=true" in msg and "\n" not in msg


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        data.load_splits(DataConfig(name="mnist"))


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLASSLAB_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("CLASSLAB_DATA")
    assert data.default_data_dir() == Path.home() / ".cache" / "classlab"


# --------------------------------------------------------------------------- splits


def test_stratified_split_exact_disjoint_deterministic(bin_root) -> None:
    root, batches = bin_root
    _, ey = _expected(batches)
    s = data.load_splits(DataConfig(dir=str(root), val_split=0.2, seed=3))
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    assert s.val_y.bincount(minlength=10).tolist() == [2] * 10
    assert s.train_y.bincount(minlength=10).tolist() == [8] * 10
    tr, va = _ids(s.train_x), _ids(s.val_x)
    assert not set(tr) & set(va) and sorted(tr + va) == list(range(100))
    assert s.train_y.tolist() == ey[tr].tolist() and s.val_y.tolist() == ey[va].tolist()
    assert _ids(s.test_x) == list(range(100, 120))  # test untouched, original order
    assert s.classes == CLASSES

    again = data.load_splits(DataConfig(dir=str(root), val_split=0.2, seed=3))
    for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(s, f), getattr(again, f))
    other = data.load_splits(DataConfig(dir=str(root), val_split=0.2, seed=4))
    assert _ids(other.val_x) != va
    assert other.val_y.bincount(minlength=10).tolist() == [2] * 10


def test_stratified_split_unequal_classes(tmp_path: Path, monkeypatch) -> None:
    counts = np.array([19, 16, 14, 12, 10, 9, 8, 6, 4, 2])
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), counts))
    monkeypatch.setattr(cifar, "CIFAR10_BIN_MD5S",
                        _write_bin(tmp_path / "cifar-10-batches-bin", _fake_batches(labels)))
    s = data.load_splits(DataConfig(dir=str(tmp_path), val_split=0.25))
    got = s.val_y.bincount(minlength=10).numpy()
    assert got.sum() == 25 and np.all(np.abs(got - counts * 0.25) < 1)
    assert (got + s.train_y.bincount(minlength=10).numpy()).tolist() == counts.tolist()


def test_subset_and_mean_std(bin_root) -> None:
    root, _ = bin_root
    full = data.load_splits(DataConfig(dir=str(root), val_split=0.2, seed=5))
    s = data.load_splits(DataConfig(dir=str(root), val_split=0.2, subset=40, seed=5))
    assert s.train_y.bincount(minlength=10).tolist() == [4] * 10
    assert torch.equal(s.val_x, full.val_x)  # subset is taken after the val split
    assert set(_ids(s.train_x)) <= set(_ids(full.train_x))
    again = data.load_splits(DataConfig(dir=str(root), val_split=0.2, subset=40, seed=5))
    assert torch.equal(s.train_x, again.train_x)
    # mean/std of the final train split's pixels / 255, per channel
    px = s.train_x.double() / 255
    assert s.mean == pytest.approx(px.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert s.std == pytest.approx(px.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-6)
    with pytest.raises(DataError, match="data.subset=81 is more than the 80"):
        data.load_splits(DataConfig(dir=str(root), val_split=0.2, subset=81))


def test_no_val_split(bin_root) -> None:
    root, _ = bin_root
    s = data.load_splits(DataConfig(dir=str(root), val_split=0.0))
    assert s.val_x.shape == (0, 3, 32, 32) and s.val_y.shape == (0,)
    assert _ids(s.train_x) == list(range(100))


# --------------------------------------------------------------------------- download


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(folder served over HTTP, its base URL, md5s of a fake py release, archive MD5)."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    src = tmp_path / "src"
    md5s = _write_py(src / "cifar-10-batches-py", _fake_batches())
    files = {f"cifar-10-batches-py/{p.name}": p.read_bytes()
             for p in sorted((src / "cifar-10-batches-py").iterdir())}
    www = tmp_path / "www"
    www.mkdir()
    archive = _tar_gz(files)
    (www / "cifar-10-python.tar.gz").write_bytes(archive)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{srv.server_address[1]}", md5s, \
            hashlib.md5(archive).hexdigest()
    finally:
        srv.shutdown()
        srv.server_close()


def test_download_then_load(served, tmp_path: Path, monkeypatch) -> None:
    _, base, md5s, archive_md5 = served
    root = tmp_path / "root"
    url = f"{base}/cifar-10-python.tar.gz"
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE_MD5", archive_md5)
    monkeypatch.setattr(cifar, "CIFAR10_PY_MD5S", md5s)
    s = data.load_splits(DataConfig(dir=str(root), download=True, url=url, val_split=0.2))
    assert s.train_x.shape == (80, 3, 32, 32) and _ids(s.test_x) == list(range(100, 120))
    assert os.listdir(root) == ["cifar-10-batches-py"]  # no temp files left
    with pytest.raises(DataError, match="already exists"):
        cifar.download_cifar10(root, url, archive_md5=archive_md5, file_md5s=md5s)


def test_download_bad_archive_md5_leaves_nothing(served, tmp_path: Path) -> None:
    _, base, md5s, _ = served
    url = f"{base}/cifar-10-python.tar.gz"
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match="archive checksum mismatch") as e:
        cifar.download_cifar10(root, url, archive_md5="0" * 32, file_md5s=md5s)
    assert url in str(e.value)
    assert os.listdir(root) == []
    fresh = tmp_path / "fresh" / "root"
    with pytest.raises(DataError):
        cifar.download_cifar10(fresh, url, archive_md5="0" * 32, file_md5s=md5s)
    assert not fresh.exists()


def test_download_bad_batch_md5_leaves_nothing(served, tmp_path: Path) -> None:
    _, base, md5s, archive_md5 = served
    root = tmp_path / "root"
    root.mkdir()
    bad = {**md5s, "data_batch_4": "0" * 32}
    with pytest.raises(DataError, match=r"data_batch_4: checksum mismatch"):
        cifar.download_cifar10(root, f"{base}/cifar-10-python.tar.gz", archive_md5=archive_md5,
                              file_md5s=bad)
    assert os.listdir(root) == []


def test_download_unsafe_archive_leaves_nothing(served, tmp_path: Path) -> None:
    www, base, md5s, _ = served
    archive = _tar_gz({"cifar-10-batches-py/../../evil": b"x"})
    (www / "evil.tar.gz").write_bytes(archive)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match="unsafe archive member"):
        cifar.download_cifar10(root, f"{base}/evil.tar.gz",
                              archive_md5=hashlib.md5(archive).hexdigest(), file_md5s=md5s)
    assert os.listdir(root) == [] and not (tmp_path / "evil").exists()


def test_download_network_errors(served, tmp_path: Path) -> None:
    _, base, md5s, _ = served
    url = f"{base}/missing.tar.gz"
    with pytest.raises(DataError, match="HTTP 404") as e:
        cifar.download_cifar10(tmp_path / "r", url, file_md5s=md5s)
    assert url in str(e.value) and "\n" not in str(e.value)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    with pytest.raises(DataError, match=f"cannot download {url}: ") as e:
        cifar.download_cifar10(tmp_path / "r", url, file_md5s=md5s, timeout=5)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- safe_extract


def _tar_with(info: tarfile.TarInfo, payload: bytes = b"") -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))  # a fine member first: nothing may be written
        info.size = len(payload) if info.isfile() else 0
        tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r")


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize("info,why", [
    (_member("/tmp/classlab-evil"), "absolute path"),
    (_member("../x"), "'..'"),
    (_member("a/../../x"), "'..'"),
    (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (_member("hard", tarfile.LNKTYPE, "ok.txt"), "link"),
    (_member("dev", tarfile.CHRTYPE), "special file"),
    (_member("blk", tarfile.BLKTYPE), "special file"),
    (_member("fifo", tarfile.FIFOTYPE), "special file"),
], ids=["absolute", "dotdot", "inner-dotdot", "symlink", "hardlink", "chardev", "blockdev",
        "fifo"])
def test_safe_extract_rejects(tmp_path: Path, info: tarfile.TarInfo, why: str) -> None:
    dest = tmp_path / "dest"
    with _tar_with(info, b"evil") as tar, pytest.raises(DataError, match=why) as e:
        download.safe_extract(tar, dest)
    assert "unsafe archive member" in str(e.value)
    assert not dest.exists() or os.listdir(dest) == []
    assert not (tmp_path / "x").exists()


def test_safe_extract_plain_files(tmp_path: Path) -> None:
    with _tar_with(_member("sub", tarfile.DIRTYPE)) as tar:
        download.safe_extract(tar, tmp_path / "dest")
    assert (tmp_path / "dest" / "ok.txt").read_bytes() == b"ok"
    assert (tmp_path / "dest" / "sub").is_dir()


# --------------------------------------------------------------------------- synthetic


def test_synthetic() -> None:
    cfg = DataConfig(name="synthetic", synthetic_size=200, val_split=0.1, seed=7)
    s = data.load_splits(cfg, Path("/nonexistent"))  # root is not used
    assert s.train_x.shape == (180, 3, 32, 32) and s.train_x.dtype == torch.uint8
    assert s.val_x.shape == (20, 3, 32, 32) and s.test_x.shape == (100, 3, 32, 32)
    assert s.train_y.dtype == s.test_y.dtype == torch.int64
    assert len(s.classes) == 10 and "red square" in s.classes
    assert s.train_y.bincount(minlength=10).tolist() == [18] * 10
    assert s.test_y.bincount(minlength=10).tolist() == [10] * 10
    again = data.load_splits(cfg)
    assert torch.equal(s.train_x, again.train_x) and torch.equal(s.test_x, again.test_x)
    other = data.load_splits(DataConfig(name="synthetic", synthetic_size=200, seed=8))
    assert not torch.equal(s.test_x, other.test_x)
    assert all(0 < m < 1 for m in s.mean) and all(0 < v < 1 for v in s.std)
