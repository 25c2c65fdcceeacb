"""Own data: the ``imagefolder`` dataset (tiny generated PNG/JPEG folders) and ``cifar100``
(tiny fake releases in both formats, plus the download path over a local HTTP server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classlab import config, data
from classlab.config import ConfigError, DataConfig
from classlab.data import DataError, cifar
from classlab.run.fit import fit
from classlab.run.start import start_run

COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cat": (30, 30, 200)}


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode == "P":  # an adaptive palette holds a solid colour exactly
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode is not None:
        img = img.convert(mode)
    img.save(path)


def _solid(w: int, h: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


def _folder(root: Path, per_class: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/NN.png`` solid-colour pictures of assorted sizes and modes."""
    sizes = [(40, 24), (24, 40), (32, 32), (17, 50), (64, 64)]
    for split, counts in per_class.items():
        for cls, n in counts.items():
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                ext = ".jpg" if i == 3 else ".png"  # JPEG (lossy: colours checked loosely)
                _save(root / split / cls / f"{i:02d}{ext}", _solid(w, h, COLOURS[cls]))
    return root


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", dir=str(root), **kw)


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder_sizes_classes_and_labels(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pics", {"train": {"ant": 8, "bee": 8, "cat": 4},
                                       "test": {"bee": 3, "ant": 2}})
    (root / "train" / "ant" / "notes.txt").write_text("not an image")  # ignored
    (root / "train" / ".hidden").mkdir()  # ignored
    s = data.load_splits(_cfg(root, val_split=0.25))
    assert s.classes == ["ant", "bee", "cat"]  # sorted folder names
    assert s.train_x.dtype == torch.uint8 and s.train_x.shape[1:] == (3, 32, 32)
    assert len(s.train_x) + len(s.val_x) == 20 and len(s.val_x) == 5
    assert sorted(s.val_y.tolist()) == [0, 0, 1, 1, 2]  # stratified
    assert s.test_y.tolist() == [0, 0, 1, 1, 1]  # test lacks "cat": fine
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        mean_rgb = x.float().mean(dim=(2, 3))  # [N,3]
        want = torch.tensor([COLOURS[s.classes[i]] for i in y.tolist()], dtype=torch.float32)
        assert torch.allclose(mean_rgb, want, atol=4)  # JPEG is off by a level or two
    again = data.load_splits(_cfg(root, val_split=0.25))
    assert torch.equal(again.train_x, s.train_x) and torch.equal(again.val_y, s.val_y)


def test_imagefolder_resize_modes_and_image_size(tmp_path: Path) -> None:
    # 96x32: red | green | blue thirds. resize squeezes all three in; center_crop keeps the
    # middle square, which is all green.
    stripes = np.zeros((32, 96, 3), dtype=np.uint8)
    stripes[:, :32] = (255, 0, 0)
    stripes[:, 32:64] = (0, 255, 0)
    stripes[:, 64:] = (0, 0, 255)
    root = tmp_path / "pics"
    _save(root / "train" / "a" / "stripes.png", stripes)
    _save(root / "train" / "b" / "grey.png", _solid(40, 24, (90, 90, 90)), mode="L")
    _save(root / "train" / "b" / "alpha.png", np.dstack([_solid(40, 24, (10, 20, 30)),
                                                        np.full((24, 40), 255, np.uint8)]))
    _save(root / "train" / "b" / "palette.png", _solid(24, 40, (10, 20, 30)), mode="P")
    _save(root / "test" / "a" / "s.png", stripes)
    squeezed = data.load_splits(_cfg(root, val_split=0.0))
    assert squeezed.train_x.shape == (4, 3, 32, 32)
    img = squeezed.train_x[0]  # [3,32,32], the stripes (class a comes first)
    assert img[:, 16, 0].tolist() == [255, 0, 0] and img[:, 16, 16].tolist() == [0, 255, 0]
    assert img[:, 16, 31].tolist() == [0, 0, 255]
    assert squeezed.train_x[1:, :, 5, 5].tolist() == [[10, 20, 30], [90, 90, 90],
                                                      [10, 20, 30]]  # alpha, grey, palette
    cropped = data.load_splits(_cfg(root, val_split=0.0, resize="center_crop"))
    assert cropped.train_x.shape == (4, 3, 32, 32)
    assert (cropped.train_x[0] == torch.tensor([0, 255, 0], dtype=torch.uint8)[:, None, None]
            ).all()
    small = data.load_splits(_cfg(root, val_split=0.0, resize="center_crop", image_size=16))
    assert small.train_x.shape == (4, 3, 16, 16) and small.test_x.shape == (1, 3, 16, 16)
    assert small.train_x[0, :, :, 3:13].tolist() == cropped.train_x[0, :, :16, :10].tolist()
    with pytest.raises(ConfigError, match="data.resize"):
        config.load(None, ["data.resize=stretch"])
    with pytest.raises(ConfigError, match="data.image_size"):
        config.load(None, ["data.image_size=4"])


def test_imagefolder_val_folder_replaces_the_carved_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pics", {"train": {"ant": 6, "bee": 6}, "val": {"bee": 2},
                                       "test": {"ant": 1, "bee": 1}})
    s = data.load_splits(_cfg(root, val_split=0.5))  # val_split is not used
    assert len(s.train_x) == 12 and s.val_y.tolist() == [1, 1]
    assert s.val_x.shape == (2, 3, 32, 32)
    sub = data.load_splits(_cfg(root, val_split=0.5, subset=4))
    assert sorted(sub.train_y.tolist()) == [0, 0, 1, 1] and sub.val_y.tolist() == [1, 1]


@pytest.mark.parametrize("split", ["test", "val"])
def test_imagefolder_class_missing_from_train(tmp_path: Path, split: str) -> None:
    root = _folder(tmp_path / "pics", {"train": {"ant": 2, "bee": 2},
                                       "test": {"ant": 1, "cat": 1}} if split == "test" else
                   {"train": {"ant": 2, "bee": 2}, "val": {"cat": 1},
                    "test": {"ant": 1}})
    with pytest.raises(DataError, match=f"{split}/cat: class 'cat' is not in") as e:
        data.load_splits(_cfg(root))
    assert "train classes: ant, bee" in str(e.value) and "\n" not in str(e.value)


def test_imagefolder_bad_layouts_are_one_line_errors(tmp_path: Path) -> None:
    def err(root: Path) -> str:
        with pytest.raises(DataError) as e:
            data.load_splits(_cfg(root, val_split=0.0))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "train: missing; expected" in err(tmp_path / "nothing")
    root = _folder(tmp_path / "a", {"train": {"ant": 2}})
    assert "test: missing" in err(root)
    (root / "test" / "ant").mkdir(parents=True)
    assert "test: no images in class folders" in err(root)
    _save(root / "test" / "ant" / "x.png", _solid(8, 8, (1, 2, 3)))
    (root / "train" / "bee").mkdir()
    assert "train/bee: no images" in err(root)
    (root / "train" / "bee").rmdir()
    (root / "train" / "ant" / "broken.png").write_bytes(b"\x89PNG not really")
    assert "broken.png: cannot read the image" in err(root)


def test_imagefolder_trains_and_class_names_reach_the_run(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pics", {"train": {"ant": 10, "bee": 10, "cat": 10},
                                       "test": {"ant": 3, "bee": 3, "cat": 3}})
    cfg = config.load(None, ["name=own", "data.name=imagefolder", f"data.dir={root}",
                             "data.image_size=24", "model.width=4", "train.epochs=1",
                             "train.batch_size=16", "train.progress=false",
                             "train.device=cpu", "train.threads=1", "log.dynamics_every=0",
                             "diagnose.enabled=false", "train.precision=fp32",
                             "train.channels_last=false"])
    threads = torch.get_num_threads()
    try:
        s, run_dir = start_run(cfg, tmp_path / "runs")
        fit(s, run_dir)
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"] == ["ant", "bee", "cat"] and summary["test_images"] == 9
    assert s.data["train"][0].shape[1:] == (3, 24, 24)
    assert summary["status"] == "finished"


# --------------------------------------------------------------------------- cifar100

FINE = [f"class_{i:02d}" for i in range(100)]


def _fake_c100(n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict:
    """split -> (x uint8 [n,3072], fine [n], coarse [n]); pixels 0..1 hold the image id."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n, first in (("train", n_train, 0), ("test", n_test, n_train)):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        ids = first + np.arange(n)
        x[:, 0], x[:, 1] = ids % 256, ids // 256
        out[split] = (x, rng.integers(0, 100, n), rng.integers(0, 20, n))
    return out


def _write_c100_py(folder: Path, fake: dict) -> dict[str, str]:
    folder.mkdir(parents=True)
    for split, (x, fine, coarse) in fake.items():
        d = {b"filenames": [b"x.png"] * len(x), b"batch_label": split.encode(),
             b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) for v in coarse],
             b"data": x}
        (folder / split).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"fine_label_names": [c.encode() for c in FINE],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {s: hashlib.md5((folder / s).read_bytes()).hexdigest() for s in fake}


def _write_c100_bin(folder: Path, fake: dict) -> dict[str, int]:
    folder.mkdir(parents=True)
    for split, (x, fine, coarse) in fake.items():
        rec = np.concatenate([coarse.astype(np.uint8)[:, None], fine.astype(np.uint8)[:, None],
                              x], axis=1)
        (folder / f"{split}.bin").write_bytes(rec.tobytes())
    (folder / "fine_label_names.txt").write_text("\n".join(FINE) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(f"super_{i}" for i in range(20)))
    return {f"{s}.bin": len(fake[s][0]) for s in fake}


def _ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def test_cifar100_both_releases_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_c100()
    monkeypatch.setattr(cifar, "CIFAR100_PY_MD5S", _write_c100_py(
        tmp_path / "p" / "cifar-100-python", fake))
    monkeypatch.setattr(cifar, "CIFAR100_BIN_RECORDS", _write_c100_bin(
        tmp_path / "b" / "cifar-100-binary", fake))
    cfg = DataConfig(name="cifar100", val_split=0.0)
    py = data.load_splits(cfg, tmp_path / "p")
    bn = data.load_splits(cfg, tmp_path / "b")
    own = data.load_splits(cfg, tmp_path / "b" / "cifar-100-binary")  # the folder itself
    for s in (py, bn, own):
        assert s.classes == FINE and s.train_x.shape == (30, 3, 32, 32)
        assert _ids(s.train_x) == list(range(30)) and _ids(s.test_x) == list(range(30, 40))
        assert s.train_y.tolist() == fake["train"][1].tolist()
        assert s.test_y.tolist() == fake["test"][1].tolist()
        assert torch.equal(s.train_x.reshape(30, -1), torch.from_numpy(fake["train"][0]))
    assert torch.equal(py.test_x, bn.test_x)


def test_cifar100_integrity_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_c100()
    py = tmp_path / "p" / "cifar-100-python"
    md5s = _write_c100_py(py, fake)
    assert cifar.CIFAR100_PY_MD5S == {"train": "16019d7e3df5f24257cddd939b257f8d",
                                     "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
    with pytest.raises(DataError, match="train: checksum mismatch"):  # the published MD5s
        cifar.read_cifar100_py(py)
    assert cifar.read_cifar100_py(py, md5s)[4] == FINE
    bn = tmp_path / "b" / "cifar-100-binary"
    records = _write_c100_bin(bn, fake)
    with pytest.raises(DataError, match=r"train.bin: wrong size 92220 bytes, expected "
                                        r"153700000 \(50000 records"):
        cifar.read_cifar100_bin(bn)
    (bn / "test.bin").write_bytes((bn / "test.bin").read_bytes()[:-1])
    with pytest.raises(DataError, match="test.bin: wrong size"):
        cifar.read_cifar100_bin(bn, records)
    bad = np.concatenate([np.full((10, 1), 20, np.uint8), np.zeros((10, 3073), np.uint8)], 1)
    (bn / "test.bin").write_bytes(bad.tobytes())  # coarse label 20: out of range
    with pytest.raises(DataError, match=r"test.bin: labels outside 0..19"):
        cifar.read_cifar100_bin(bn, records)
    monkeypatch.setattr(cifar, "CIFAR100_BIN_RECORDS", records)
    with pytest.raises(DataError, match="no CIFAR-100 under .*data.download=true"):
        data.load_splits(DataConfig(name="cifar100"), tmp_path / "empty")


@pytest.fixture
def c100_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict]]:
    """(base URL serving cifar-100-python.tar.gz and other.tar.gz, fake data); the module's
    MD5 tables point at the fake release."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    fake = _fake_c100(n_train=20, n_test=10)
    src = tmp_path / "src" / "cifar-100-python"
    monkeypatch.setattr(cifar, "CIFAR100_PY_MD5S", _write_c100_py(src, fake))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-100-python")
    www = tmp_path / "www"
    www.mkdir()
    for name in ("cifar-100-python.tar.gz", "other.tar.gz"):
        (www / name).write_bytes(buf.getvalue())
    monkeypatch.setattr(cifar, "CIFAR100_ARCHIVE_MD5", hashlib.md5(buf.getvalue()).hexdigest())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(Quiet, directory=str(www)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", fake
    finally:
        srv.shutdown()
        srv.server_close()


def test_cifar100_download_uses_the_cifar100_url_by_default(
        c100_server: tuple[str, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, fake = c100_server
    monkeypatch.setattr(cifar, "CIFAR100_URL", f"{base}/cifar-100-python.tar.gz")
    root = tmp_path / "root"
    cfg = DataConfig(name="cifar100", dir=str(root), download=True, val_split=0.0)
    assert cfg.url.endswith("cifar-10-python.tar.gz")  # left at the CIFAR-10 default
    s = data.load_splits(cfg)
    assert _ids(s.train_x) == list(range(20)) and s.classes == FINE
    assert os.listdir(root) == ["cifar-100-python"]  # no temp files left
    # an explicit data.url is used as given
    other = tmp_path / "other"
    s = data.load_splits(DataConfig(name="cifar100", dir=str(other), download=True,
                                    url=f"{base}/other.tar.gz", val_split=0.0))
    assert _ids(s.test_x) == list(range(20, 30))
    with pytest.raises(DataError, match="HTTP 404"):
        data.load_splits(DataConfig(name="cifar100", dir=str(tmp_path / "r3"), download=True,
                                    url=f"{base}/missing.tar.gz"))
    assert not (tmp_path / "r3").exists()


def test_cifar100_download_checks_the_archive(c100_server: tuple[str, dict],
                                              tmp_path: Path) -> None:
    base, _ = c100_server
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match="archive checksum mismatch"):
        cifar.download_cifar100(root, f"{base}/cifar-100-python.tar.gz", archive_md5="0" * 32)
    assert os.listdir(root) == []
