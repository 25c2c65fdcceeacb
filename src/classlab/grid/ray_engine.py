"""``classlab grid GRID --engine ray [--address auto|HOST:PORT]``: the grid's points as Ray
tasks, on a laptop or across a cluster's nodes.

Each unfinished (point, seed) is one task asking for its resources: ``train.threads`` CPUs
(1 when 0) and one GPU when its device is CUDA (``auto`` on a cluster that has GPUs). A task
runs the one run flow (:func:`classlab.grid.folder.run_point`) and writes the point's output
to its ``train.log``.

Where the folder lives. The driver writes a token into the grid folder; a task that can read
it sees the same file system and trains in place ("shared" mode). A task that cannot trains
in a temporary folder on its node, starting from what the driver sent (config.yaml and, when
resuming, the last checkpoint), and sends the finished folder back; the driver writes it into
the grid folder atomically ("copy" mode). The mode is printed per point.

Faults. A task whose worker process or node dies is retried by Ray (up to ``RETRIES`` times)
and resumes from the point's last checkpoint (in shared mode; in copy mode the retry starts
from what the driver holds). A point that fails for its own reasons (bad value, NaN loss) is
recorded as failed once and not retried. Ctrl-C on the driver cancels the outstanding tasks;
every run folder stays resumable, and re-running the same command skips finished points.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from classlab.config import ConfigError
from classlab.engine.console import console
from classlab.grid.folder import error_line, record_failure, run_point
from classlab.grid.spec import Point
from classlab.rundir import GridFiles, RunFiles
from classlab.rundir.summary import is_finished, read_summary

INSTALL_HINT = "--engine ray needs the ray package: pip install 'classlab[ray]'"
RETRIES = 3  # re-runs of a task whose worker process or node died
TOKEN = ".classlab-shared"  # in the grid folder: who can read it shares the file system
# Test hook: with this variable set in the driver's environment, every task acts as if its
# node could not see the grid folder (copy mode on a single machine).
FORCE_COPY_ENV = "CLASSLAB_RAY_FORCE_COPY"


def import_ray() -> Any:
    """The ray module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


# --------------------------------------------------------------------------- on the worker


def _pack(folder: Path, only: tuple[str, ...] | None = None) -> bytes:
    """A run folder (or only the named files of it) as gzipped tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(Path(folder).rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not rel.name.endswith(".tmp") and (
                    only is None or str(rel) in only):
                tar.add(path, arcname=str(rel), recursive=False)
    return buf.getvalue()


def _unpack(data: bytes, folder: Path) -> None:
    from classlab.data.download import safe_extract

    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        safe_extract(tar, folder)


def _sees_grid_folder(grid_dir: str, token: str) -> bool:
    try:
        return (Path(grid_dir) / TOKEN).read_text() == token
    except OSError:
        return False


def _node() -> str:
    try:
        import ray

        return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    except Exception:  # noqa: BLE001 - only a label for the progress line
        return socket.gethostname()


def _train_logged(point_dir: Path, data_dir: str | None, threads: int) -> dict:
    """run_point with its output appended to the point's train.log; a failure the point
    caused itself comes back as ``{"error": ...}`` (recorded in its summary.json), so that
    Ray retries only what killed the worker."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    log_path = RunFiles(point_dir).train_log
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        print(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {_node()}",
              flush=True)
        try:
            # a retried task whose first attempt still holds the point waits for it
            summary = run_point(point_dir, Path(data_dir) if data_dir else None,
                                wait=float("inf"))
        except Exception as e:  # already recorded in summary.json by run_point
            return {"error": error_line(e)}
    return {"summary": summary}


def run_task(grid_dir: str, name: str, data_dir: str | None, token: str, threads: int,
             seed_files: bytes, force_copy: bool = False) -> dict:
    """One point, on whichever node Ray chose. ``seed_files``: the driver's copy of the
    point folder's config.yaml and last.pt, used when this node cannot see the grid folder."""
    t0 = time.time()
    if not force_copy and _sees_grid_folder(grid_dir, token):
        out = _train_logged(Path(grid_dir) / name, data_dir, threads)
        return {**out, "mode": "shared", "node": _node(), "seconds": time.time() - t0}
    with tempfile.TemporaryDirectory(prefix="classlab-point-") as tmp:
        local = Path(tmp) / name
        _unpack(seed_files, local)
        out = _train_logged(local, data_dir, threads)
        return {**out, "mode": "copy", "node": _node(), "seconds": time.time() - t0,
                "folder": _pack(local)}


# --------------------------------------------------------------------------- on the driver


def _resources(p: Point, ray: Any) -> dict:
    threads = p.cfg.train.threads or 1
    device = p.cfg.train.device
    gpus = 1 if device.startswith("cuda") or (
        device == "auto" and ray.cluster_resources().get("GPU", 0) > 0) else 0
    return {"num_cpus": threads, "num_gpus": gpus}


def _write_back(point_dir: Path, data: bytes) -> None:
    """Replace ``point_dir`` by the folder a copy-mode task sent back: unpacked next to it,
    then swapped in by two renames, so the grid folder never holds half a point."""
    incoming = point_dir.with_name(f".{point_dir.name}.incoming-{secrets.token_hex(4)}")
    old = point_dir.with_name(f".{point_dir.name}.old-{secrets.token_hex(4)}")
    try:
        _unpack(data, incoming)
        point_dir.rename(old)
        incoming.rename(point_dir)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


REACH_SECONDS = 3.0  # how long the driver waits for HOST:PORT to accept a connection


def check_reachable(address: str | None) -> None:
    """``--address HOST:PORT``: something accepts TCP connections there, checked in at most
    :data:`REACH_SECONDS` (``ray.init`` would otherwise retry for minutes). None, ``auto``
    and other forms are left to Ray. One-line ConfigError."""
    if not address or address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or "
                          "auto")
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_SECONDS):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(f"--address {address}: no Ray cluster reachable there ({why}); "
                          "start one with `ray start --head` or check the address") from None


def connect(ray: Any, address: str | None) -> None:
    host = (address or "").rpartition(":")[0]
    # Ray replaces 127.0.0.1 by the machine's outward address; another loopback address
    # (a cluster started with --node-ip-address=127.0.0.2) is kept, and the driver joins it
    # on that address, so such a cluster's traffic never leaves the loopback interface.
    extra = {"_node_ip_address": host} if host.startswith("127.") and host != "127.0.0.1" \
        else {}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, **extra)
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: no Ray cluster there ({e})") from None


def _outcome(res: dict, point_dir: Path) -> tuple[bool, str]:
    summary = read_summary(RunFiles(point_dir).summary)
    where = f"{res['seconds']:.0f} s on {res['node']}, {res['mode']} folder"
    if "error" in res or not is_finished(summary):
        return False, f"FAILED: {res.get('error') or (summary or {}).get('error')} ({where})"
    return True, f"finished, test acc {summary['final']['test_acc']:.2f}% ({where})"


def run_on_ray(points: list[Point], gdir: Path, data_dir: Path | None,
               address: str | None) -> list[str]:
    """Submit every point as a Ray task and wait for them all; returns the failed names."""
    ray = import_ray()
    connect(ray, address)
    token = secrets.token_hex(16)
    (GridFiles(gdir).root / TOKEN).write_text(token)
    task = ray.remote(run_task)
    force_copy = bool(os.environ.get(FORCE_COPY_ENV))
    refs: dict[Any, Point] = {}
    for p in points:
        opts = {**_resources(p, ray), "max_retries": RETRIES, "retry_exceptions": False}
        seed = _pack(gdir / p.name, only=("config.yaml", "last.pt"))
        refs[task.options(**opts).remote(str(gdir.resolve()), p.name,
                                         str(Path(data_dir).resolve()) if data_dir else None,
                                         token, p.cfg.train.threads or 1, seed,
                                         force_copy)] = p
    print(f"{len(refs)} tasks submitted to Ray ({ray.cluster_resources().get('CPU', 0):g} "
          "CPUs in the cluster)", flush=True)
    try:
        return _collect(ray, refs, gdir)
    except KeyboardInterrupt:
        # Disconnecting the driver cancels every task it owns (their workers are stopped);
        # ray.cancel(force=True) itself crashed the driver in Ray 2.60 when a cancelled
        # task's reply was already on its way. Checkpoints stay: the next run resumes.
        print(f"interrupted: {len(refs)} unfinished tasks cancelled", file=sys.stderr,
              flush=True)
        raise
    finally:
        ray.shutdown()


def _collect(ray: Any, refs: dict, gdir: Path) -> list[str]:
    failed, total, t0 = [], len(refs), time.time()
    bar = console().bar(total, "grid", mininterval=1.0)
    try:
        while refs:
            (ref,), _ = ray.wait(list(refs), num_returns=1)
            p = refs.pop(ref)
            ok, line = _finish(ray, ref, p, gdir)
            if not ok:
                failed.append(p.name)
            done = total - len(refs)
            bar.update(1)
            bar.write(f"[{done}/{total}] {p.name}: {line}; grid {time.time() - t0:.0f} s")
    finally:
        bar.close()
    return failed


def _finish(ray: Any, ref: Any, p: Point, gdir: Path) -> tuple[bool, str]:
    point_dir = gdir / p.name
    try:
        res = ray.get(ref)
    except ray.exceptions.RayError as e:  # the worker or node died RETRIES + 1 times
        error = f"worker died {RETRIES + 1} times ({type(e).__name__}); see {point_dir}"
        record_failure(point_dir, error)
        return False, f"FAILED: {error}"
    if res["mode"] == "copy":
        _write_back(point_dir, res.pop("folder"))
    return _outcome(res, point_dir)
