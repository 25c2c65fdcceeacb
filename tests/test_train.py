"""End-to-end: tiny runs on synthetic data write their files, eval reproduces them, seeds
reproduce runs, a resumed run is bit-identical to an uninterrupted one."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from classlab import config
from classlab.augment import make_generator
from classlab.cli import main
from classlab.engine import TTA, Dist, Ema, Normalizer, evaluate
from classlab.engine.amp import Amp
from classlab.engine.evaluate import view_logits
from classlab.run.fit import fit, update_best
from classlab.run.resume import resume_run
from classlab.run.session import session_from_run
from classlab.run.start import start_run
from classlab.rundir import METRIC_FIELDS, RunFiles
from classlab.rundir.checkpoint import load_checkpoint, load_test_outputs
from classlab.rundir.metrics import read_metrics

TINY = ["name=tiny", "data.name=synthetic", "data.synthetic_size=300", "model.width=4",
        "train.epochs=2", "train.batch_size=64", "train.progress=false",
        "diagnose.enabled=false", "log.dynamics_every=3", "train.precision=fp32",
        "train.channels_last=false"]


def _run(tmp_path, *extra, out="runs"):
    cfg = config.load(None, TINY + list(extra))
    s, run_dir = start_run(cfg, tmp_path / out)
    summary = fit(s, run_dir)
    return run_dir, summary


def test_run_folder_has_all_files_and_eval_reproduces(tmp_path, capsys):
    run_dir, summary = _run(tmp_path)
    for f in ("config.yaml", "metrics.csv", "summary.json", "last.pt", "dynamics.csv"):
        assert (run_dir / f).is_file(), f
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == set(METRIC_FIELDS)
    assert summary["status"] == "finished" and summary["params"] > 0
    assert summary["final"]["test_acc"] == pytest.approx(rows[-1]["test_acc"])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    # the resolved config re-loads to the same run
    assert config.load(run_dir / "config.yaml") == config.load(None, TINY)
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 2
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"({rows[-1]['test_acc']:.2f}%)" in out


def test_per_sample_loss_is_a_true_average(tmp_path):
    run_dir, _ = _run(tmp_path, "train.epochs=1")
    s, _ = session_from_run(run_dir)
    x, y = s.data["test"]
    # batch size that does not divide N: the mean must not depend on it
    a = evaluate(s.model, x, y, normalize=s.normalize, batch_size=7, amp=s.amp,
                       keep_outputs=True)
    b = evaluate(s.model, x, y, normalize=s.normalize, batch_size=1000, amp=s.amp)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    assert a.loss == pytest.approx(a.losses.mean().item(), rel=1e-5)
    assert a.acc == b.acc == pytest.approx(100 * (a.preds == y).float().mean().item())


def test_learns_the_synthetic_data(tmp_path):
    _, summary = _run(tmp_path, "train.epochs=4", "data.synthetic_size=600", "model.width=8",
                      "optim.lr=0.003")
    assert summary["final"]["test_acc"] > 40  # 10 classes: chance is 10%


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    a, _ = _run(tmp_path, out="a")
    b, _ = _run(tmp_path, out="b")
    c, _ = _run(tmp_path, "train.seed=2", out="c")
    wa, wb, wc = (load_checkpoint(d / "last.pt")["model"] for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def _interrupted_run(tmp_path, extra: list[str], after_epoch: int):
    """Folder of a run stopped right after ``after_epoch`` (its files written), as if killed."""

    class Stop(Exception):
        pass

    def stop(row):
        if row["epoch"] == after_epoch:
            raise Stop

    s, part = start_run(config.load(None, TINY + extra), tmp_path / "part")
    with pytest.raises(Stop):
        fit(s, part, on_epoch=stop)
    return part


def test_resume_is_bit_identical_and_never_duplicates_rows(tmp_path):
    full, _ = _run(tmp_path, "train.epochs=3", out="full")
    part = _interrupted_run(tmp_path, ["train.epochs=3"], after_epoch=2)
    # a partial epoch-3 line in the CSVs, as if killed mid-write
    with open(part / "metrics.csv", "a") as f:
        f.write("3,0.001,2.2")
    with open(part / "dynamics.csv", "a") as f:
        f.write("999999,3,conv1.weight,grad_norm,1.0\n999999,3,conv1")
    resumed = resume_run(part)
    s2, epoch = resumed.session, resumed.progress.epoch
    assert epoch == 2
    fit(s2, part, resumed.progress)
    wf, wp = (load_checkpoint(d / "last.pt")["model"] for d in (full, part))
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    mf, mp = (read_metrics(d / "metrics.csv") for d in (full, part))
    assert [r["epoch"] for r in mp] == [1, 2, 3]
    for rf, rp in zip(mf, mp):
        assert {k: v for k, v in rf.items() if k != "seconds"} == \
               {k: v for k, v in rp.items() if k != "seconds"}
    keys = lambda d: [(r["step"], r["layer"], r["metric"])  # noqa: E731
                      for r in csv.DictReader(open(d / "dynamics.csv"))]
    assert keys(full) == keys(part)


def test_cli_train_writes_run_and_bad_config_writes_nothing(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"name": "cli"}))
    out = tmp_path / "runs"
    # overrides are accepted after options too
    assert main(["train", str(cfg_file), "--out", str(out), *TINY[1:], "train.epochs=1"]) == 0
    assert len(list(out.iterdir())) == 1
    capsys.readouterr()
    assert main(["train", str(cfg_file), "optim.lr=-1", "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["classlab train: error: optim.lr: -1.0 is out of range; must be > 0.0"]
    assert not (tmp_path / "r2").exists()


def test_missing_data_error_is_one_line_and_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["train", "data.name=cifar10", "--data-dir", str(tmp_path / "nodata"),
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(tmp_path / "nodata") in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_nonfinite_loss_stops_with_epoch_and_step(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["train", *TINY, "optim.name=sgd", "optim.lr=1e30", "sched.name=none",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite loss at epoch 1, step" in err
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "non-finite" in summary["error"]


@pytest.mark.parametrize("extra", [["train.ema_decay=0.9"], ["train.tta=flip_translate"],
                                   ["train.label_smoothing=0.1", "train.grad_clip=1.0"]])
def test_training_tricks_run_and_eval_reproduces(tmp_path, capsys, extra):
    run_dir, summary = _run(tmp_path, "train.epochs=1", *extra)
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    assert f"({summary['final']['test_acc']:.2f}%)" in capsys.readouterr().out


def test_ema_is_the_average_it_claims():
    model = torch.nn.Linear(2, 2)
    ema = Ema(model, 0.75)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, 0.75 * w0 + 0.25 * (w0 + 4.0))


def test_tta_views_are_flips_and_one_pixel_shifts():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    views = TTA["flip_translate"](x)
    assert len(views) == 6 and torch.equal(views[1], x.flip(-1))
    assert torch.equal(views[2][..., 1:, 1:], x[..., :-1, :-1])  # moved down-right by one
    assert torch.equal(views[4][..., :-1, :-1], x[..., 1:, 1:])


def test_tta_fraction_rescores_only_the_least_confident_images():
    """Logits = the 1x1 image's 3 pixels, plus 10 on class 0 in every call after the first
    (the model tells the views apart by a call counter). 4 images, fraction 0.5: the 2 least
    confident plain views (images 1 and 3, the flattest softmax) get the mean of the 2 flip
    views, +5 on class 0; images 0 and 2 keep their plain logits."""
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):  # [B, 3, 1, 1] -> [B, 3], plus 10 on class 0 for a second view
            calls.append(len(x))
            out = x.flatten(1).clone()
            if len(calls) > 1:
                out[:, 0] += 10.0
            return out

    x = torch.tensor([[5.0, 0, 0], [1, 1, 0], [0, 6, 0], [0, 0.5, 0.4]]).view(4, 3, 1, 1)
    amp = Amp("cpu", "fp32")
    out = view_logits(Counting(), x, amp, "flip", fraction=0.5)
    assert calls == [4, 2]  # all 4 plain, then the second view of 2 images only
    plain = x.flatten(1)
    assert torch.equal(out[[0, 2]], plain[[0, 2]])  # confident: untouched
    assert torch.allclose(out[[1, 3]], plain[[1, 3]] + torch.tensor([5.0, 0, 0]))  # mean of 2
    calls.clear()
    full = view_logits(Counting(), x, amp, "flip", fraction=1.0)
    assert calls == [4, 4] and torch.allclose(full, plain + torch.tensor([5.0, 0, 0]))


def test_eval_every_skips_epochs_but_always_scores_the_last(tmp_path):
    run_dir, summary = _run(tmp_path, "train.epochs=3", "train.eval_every=2")
    with open(run_dir / "metrics.csv", newline="") as f:
        raw = list(csv.DictReader(f))
    assert [r["test_acc"] == "" for r in raw] == [True, False, False]  # epochs 2 and 3 scored
    assert all(r["train_acc"] for r in raw)
    rows = read_metrics(run_dir / "metrics.csv")
    assert summary["final"]["test_acc"] == pytest.approx(rows[-1]["test_acc"])
    # the best epoch is one that was validated, never the unscored epoch 1
    assert summary["best_by_val"]["by"] == "val_acc" and summary["best_by_val"]["epoch"] >= 2
    # diagnose's cache of per-image test outputs belongs to the last epoch
    assert load_test_outputs(RunFiles(run_dir).test_outputs, 3, summary["test_images"]) is not None


def test_eval_every_zero_scores_only_the_last_epoch(tmp_path):
    run_dir, _ = _run(tmp_path, "train.epochs=2", "train.eval_every=0")
    rows = read_metrics(run_dir / "metrics.csv")
    assert rows[0]["test_acc"] != rows[0]["test_acc"] and rows[0]["val_acc"] != rows[0]["val_acc"]
    assert 0 <= rows[1]["test_acc"] <= 100


def test_eval_every_with_plateau_on_a_val_metric_is_refused(tmp_path, capsys):
    rc = main(["train", *TINY, "sched.name=plateau", "train.eval_every=0", "--out",
               str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "train.eval_every" in err and "sched.monitor=train_loss" in err
    assert not (tmp_path / "runs").exists()
    cfg = config.load(None, TINY + ["sched.name=plateau", "sched.monitor=train_loss",
                                    "train.eval_every=0"])
    assert cfg.train.eval_every == 0


def test_update_best_prefers_validated_epochs():
    nan = float("nan")

    def row(epoch, train_acc, val_acc):
        return {"epoch": epoch, "train_acc": train_acc, "val_acc": val_acc, "test_acc": 50.0}

    best = update_best({}, row(1, 90.0, nan))
    assert best["by"] == "train_acc" and best["epoch"] == 1
    best = update_best(best, row(2, 10.0, 40.0))  # first validated epoch wins
    assert best["by"] == "val_acc" and best["epoch"] == 2
    best = update_best(best, row(3, 99.0, nan))  # unvalidated: cannot displace it
    assert best["epoch"] == 2
    best = update_best(best, row(4, 99.0, 41.0))
    assert best["epoch"] == 4 and best["score"] == 41.0


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalizer_matches_the_formula(channels_last):
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    x = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8)
    out = Normalizer(mean, std, torch.device("cpu"), channels_last)(x)
    want = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) \
        / torch.tensor(std).double().view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    # a strided view (HWC data permuted to NCHW, as the albumentations backend hands over)
    # comes out dense in the chosen layout, with the same values
    view = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    out_v = Normalizer(mean, std, torch.device("cpu"), channels_last)(view)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out_v.is_contiguous(memory_format=fmt) and torch.equal(out_v, out)


def test_fast_recipe_options_resume_bit_identically(tmp_path):
    """Lookahead (its slow copy and step count) and alternating flip survive a resume."""
    extra = ["train.epochs=3", "optim.lookahead_every=2", "aug.flip_mode=alternate",
             "train.eval_every=0"]
    full, _ = _run(tmp_path, *extra, out="full")
    part = _interrupted_run(tmp_path, extra, after_epoch=1)
    resumed = resume_run(part)
    s2, epoch = resumed.session, resumed.progress.epoch
    assert epoch == 1 and s2.lookahead.steps == s2.steps_per_epoch
    fit(s2, part, resumed.progress)
    wf, wp = (load_checkpoint(d / "last.pt")["model"] for d in (full, part))
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    # the run ended on Lookahead's slow weights
    la = load_checkpoint(full / "last.pt")["lookahead"]
    model_floats = [v for v in wf.values() if v.is_floating_point()]
    assert all(torch.equal(a, b) for a, b in zip(model_floats, la["slow"]))


@pytest.mark.parametrize("val_split,best", [("0", False), ("0.2", True)])
def test_final_line_names_only_scored_splits(tmp_path, capsys, val_split, best):
    assert main(["train", *TINY, "train.epochs=1", f"data.val_split={val_split}",
                 "--out", str(tmp_path)]) == 0
    (final,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Final:")]
    assert "nan" not in final and "test acc" in final
    assert ("val acc" in final) == best and ("best by val" in final) == best


def test_ranks_augment_from_their_own_streams():
    """Under torchrun every rank shuffles with the same generator; augmentation must not
    repeat across ranks (else the k-th image of each shard gets the same crop)."""
    def draws(dist):
        g = make_generator(5, "cpu")
        return torch.rand(4, generator=dist.rank_generator(g))

    single = Dist()
    g = make_generator(5, "cpu")
    assert single.rank_generator(g) is g  # one process: the stream is unchanged
    r0, r1 = draws(Dist(rank=0, world=2)), draws(Dist(rank=1, world=2))
    assert not torch.equal(r0, r1)
    assert torch.equal(r0, draws(Dist(rank=0, world=2)))  # reproducible per rank


# --------------------------------------------------------------------------- process state


def test_train_threads_apply_to_the_run_and_do_not_leak(tmp_path):
    # Before: build_session called torch.set_num_threads for the whole process, so a
    # notebook cell (or the next test) after a run kept the run's train.threads.
    import classlab
    from classlab.run.session import build_session

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    seen = []
    cfg = config.load(None, TINY + [f"train.threads={other}"])
    s = build_session(cfg)
    assert torch.get_num_threads() == before
    real_step = s.optimizer.step

    def spy(*a, **k):  # the thread count while the optimizer steps, inside fit
        seen.append(torch.get_num_threads())
        return real_step(*a, **k)

    s.optimizer.step = spy
    run_dir = start_run(cfg, tmp_path / "a")[1]
    fit(s, run_dir)
    assert set(seen) == {other} and torch.get_num_threads() == before
    classlab.train(cfg, out=tmp_path / "b")
    assert torch.get_num_threads() == before


def test_resume_keeps_cells_with_commas_quotes_and_newlines(tmp_path):
    # Before: the rows kept on resume were rewritten with a hand-made quoting that did not
    # double embedded quotes, so a cell holding '"' came back as another value.
    from classlab.rundir.metrics import truncate_csv

    path = tmp_path / "t.csv"
    rows = [["1", 'say "hi"', "a,b"], ["2", "line\nbreak", "plain"], ["3", "dropped", "x"]]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["step", "layer", "value"], *rows])
    truncate_csv(path, lambda r: int(r["step"]) <= 2, ["step", "layer", "value"])
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["step", "layer", "value"], *rows[:2]]
