"""The fast recipe: ``fastnet`` (airbench-like) and experiments/fast*.yaml.

Everything here runs on the CPU in a few seconds: tiny widths, synthetic data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_weights
from test_models import output_shapes

from classlab import config
from classlab.config import ModelConfig
from classlab.diagnose import compute_cams
from classlab.models import MODELS, NORMS, FastNet, build_model, count_params
from classlab.run.fit import fit
from classlab.run.start import start_run

ROOT = Path(__file__).resolve().parents[1]
FAST_CONFIGS = sorted((ROOT / "experiments").glob("fast*.yaml"))


def _correlated_images(n: int, seed: int = 0) -> torch.Tensor:
    """``[n,3,32,32]`` float images whose 2x2 patches are strongly correlated (smooth,
    colour-mixed noise), the case whitening is for; unit-ish per-channel scale."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 34, 34, generator=g)
    smooth = F.avg_pool2d(base, 3, stride=1)  # [n,3,32,32]: neighbouring pixels correlated
    mix = torch.tensor([[1.0, 0.6, 0.3], [0.5, 1.0, 0.5], [0.2, 0.6, 1.0]])
    x = torch.einsum("ij,njhw->nihw", mix, smooth) + 0.3  # channels correlated, mean != 0
    return x / x.std()


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_fastnet_forward_backward_finite(norm: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="fastnet", norm=norm, width=8, gn_groups=4), 10)
    x = torch.randn(6, 3, 32, 32)
    model.init_from_data(x)
    out = model(x)
    assert out.shape == (6, 10)
    out.logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
        else:  # frozen: the whitening conv and the norms' scales
            assert p.grad is None, name
            assert name.startswith("whiten.") or name.endswith("norm1.weight") \
                or name.endswith("norm2.weight"), name


def test_fastnet_registered_with_width_scaling() -> None:
    assert "fastnet" in MODELS
    model = build_model(ModelConfig(name="fastnet", width=8), 10).eval()
    shapes = output_shapes(model, ("whiten", "block1", "block2", "block3"))
    assert shapes == {"whiten": (2, 24, 31, 31), "block1": (2, 8, 15, 15),
                      "block2": (2, 32, 7, 7), "block3": (2, 32, 3, 3)}
    # trainable: conv weights, the norms' biases and the linear head (no norm scales)
    w = 8
    convs = 24 * w * 9 + w * w * 9 + w * 4 * w * 9 + 3 * (4 * w) ** 2 * 9
    assert count_params(model) == convs + 2 * (w + 4 * w + 4 * w) + 4 * w * 10


def test_init_from_data_whitens_patches() -> None:
    """Over the 2x2 patches of the data, the first 12 whitening channels have mean 0 and
    covariance diag(l / (l + eps)) (identity up to the eps regulariser); the other 12 are
    their negatives."""
    x = _correlated_images(60)
    model = FastNet(10, torch.nn.BatchNorm2d, width=8)
    model.init_from_data(x)
    with torch.no_grad():
        z = model.whiten(x).double()  # [N,24,31,31], before the GELU
    z = z.permute(0, 2, 3, 1).reshape(-1, 24)  # one row per patch
    first, second = z[:, :12], z[:, 12:]
    torch.testing.assert_close(second, -first)
    assert first.mean(0).abs().max() < 1e-4
    cov = torch.cov(first.T, correction=0)  # [12,12]
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 1e-4  # decorrelated
    # diagonal = l / (l + eps): every eigenvalue of this data is >> eps, so ~1
    patches = F.unfold(x, 2).transpose(1, 2).reshape(-1, 12).double()
    eig = torch.linalg.eigvalsh(torch.cov(patches.T, correction=0)).flip(0)
    torch.testing.assert_close(torch.diag(cov), eig / (eig + FastNet.whiten_eps),
                               rtol=1e-4, atol=1e-5)
    assert torch.diag(cov).min() > 0.9
    # the raw data was far from white: the whitening did something
    raw = torch.cov(patches.T, correction=0)
    assert (raw - torch.diag(torch.diag(raw))).abs().max() > 0.3


def test_init_from_data_channels_last_and_checkpoint_round_trip(tmp_path: Path) -> None:
    x = _correlated_images(40, seed=1)
    a = FastNet(10, torch.nn.BatchNorm2d, width=8)
    b = FastNet(10, torch.nn.BatchNorm2d, width=8)
    a.init_from_data(x)
    b.init_from_data(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a.whiten.weight, b.whiten.weight)
    # the whitening filters are ordinary (frozen) parameters: they travel in the state dict
    torch.save(a.state_dict(), tmp_path / "w.pt")
    c = FastNet(10, torch.nn.BatchNorm2d, width=8)
    c.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    a.eval()
    c.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x[:4]), c(x[:4]))


def test_gradcam_layers_of_fast_yaml_exist() -> None:
    cfg = config.load(ROOT / "experiments" / "fast.yaml", ["model.width=8"])
    model = build_model(cfg.model, 10)
    model.init_from_data(torch.randn(8, 3, 32, 32))
    maps = compute_cams(model, torch.randn(3, 3, 32, 32), cfg.diagnose.layers)
    assert set(maps) == set(cfg.diagnose.layers) == {"block1", "block2", "block3"}
    for m in maps.values():
        assert m.shape == (3, 32, 32) and torch.isfinite(m).all()


@pytest.mark.parametrize("path", FAST_CONFIGS, ids=lambda p: p.name)
def test_fast_configs_load(path: Path) -> None:
    cfg = config.load(path)
    assert cfg.model.name == "fastnet"
    assert "block1" in cfg.diagnose.layers


def test_fast_configs_exist() -> None:
    assert {p.name for p in FAST_CONFIGS} >= {"fast.yaml", "fast94.yaml"}


def test_fast_recipe_learns_synthetic(tmp_path: Path) -> None:
    """The recipe of fast.yaml, shrunk (width 8, 800 synthetic images, 4 epochs), learns
    well above chance (10 classes: 10%)."""
    threads = torch.get_num_threads()
    cfg = config.load(ROOT / "experiments" / "fast.yaml", [
        "data.name=synthetic", "data.synthetic_size=800", "model.width=8",
        "train.epochs=4", "train.batch_size=64", "optim.lr=0.094", "train.threads=1",
        "sched.warmup_epochs=0.5", "train.precision=fp32", "train.channels_last=false"])
    try:
        s, run_dir = start_run(cfg, tmp_path)
        summary = fit(s, run_dir)
    finally:
        torch.set_num_threads(threads)
    print(summary["final"])
    assert summary["status"] == "finished"
    assert summary["final"]["test_acc"] > 50.0, summary["final"]


# ----------------------------------------------------- optim.whiten_bias_epochs (airbench)


def _window_setup(whiten_epochs: float, optim: str = "sgd"):
    """A width-8 fastnet, its optimizer and its linear schedule (warm-up 1 epoch of 4 steps,
    3 epochs), the whitening bias trained for ``whiten_epochs``."""
    from classlab.optim import build_optimizer, build_scheduler

    cfg = config.load(None, [f"optim.name={optim}", "optim.lr=0.1", "optim.momentum=0.9",
                             "optim.no_decay_norm_bias=true", "optim.norm_bias_lr_scale=4",
                             f"optim.whiten_bias_epochs={whiten_epochs}", "sched.name=linear",
                             "sched.warmup_epochs=1", "model.name=fastnet"])
    torch.manual_seed(0)
    model = FastNet(10, torch.nn.BatchNorm2d, width=8)
    model.init_from_data(_correlated_images(16))
    opt = build_optimizer(model, cfg.optim)
    return model, opt, build_scheduler(opt, cfg.sched, epochs=3, steps_per_epoch=4)


@pytest.mark.parametrize("optim", ["sgd", "muon"])
def test_the_whitening_bias_trains_for_its_epochs_with_its_own_decay_then_freezes(optim):
    """1.5 epochs of 4 steps: the bias's LR is 0.4 x (1 - t/6) at step t whatever the run's
    warm-up does to the other groups, it moves while t < 6 and never after; the rest trains
    on, and the other groups' LRs are those of a run without the window."""
    model, opt, stepper = _window_setup(1.5, optim=optim)
    _, ref_opt, ref_stepper = _window_setup(0.0, optim=optim)
    window = opt.param_groups[-1]
    assert window["params"] == [model.whiten.bias] and model.whiten.bias.requires_grad
    assert not model.whiten.weight.requires_grad
    x, y = _correlated_images(16, seed=3), torch.arange(16) % 10
    history = []
    for t in range(12):
        assert window["lr"] == pytest.approx(0.4 * max(0.0, 1 - t / 6))
        assert [g["lr"] for g in opt.param_groups[:-1]] == \
            pytest.approx([g["lr"] for g in ref_opt.param_groups])
        before = model.whiten.bias.detach().clone()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ref_opt.step()  # no gradients: only keeps the scheduler's order check quiet
        stepper.after_batch()
        ref_stepper.after_batch()
        history.append(not torch.equal(before, model.whiten.bias))
    assert history == [True] * 6 + [False] * 6  # steps 0-5 at LR > 0; frozen from step 6
    assert not model.whiten.bias.requires_grad and model.whiten.bias.grad is None
    assert model.block1.norm1.bias.grad is None  # zero_grad; but it trained all along:
    assert not torch.equal(model.block1.norm1.bias, torch.zeros_like(model.block1.norm1.bias))


def test_the_window_state_resumes_frozen_or_not():
    model, opt, stepper = _window_setup(0.5)
    for _ in range(3):
        opt.step()  # no gradients: nothing moves, the scheduler's order check is satisfied
        stepper.after_batch()
    state = stepper.state_dict()
    fresh_model, _, fresh = _window_setup(0.5)
    fresh.load_state_dict(state)
    assert fresh_model.whiten.bias.requires_grad is False and fresh.batches == 3
    model2, opt2, early = _window_setup(2.0)
    early.load_state_dict(state)
    assert model2.whiten.bias.requires_grad and opt2.param_groups[-1]["lr"] == \
        pytest.approx(0.4 * (1 - 3 / 8))
    _, _, plain = _window_setup(0.0)
    assert "window_steps" not in plain.state_dict()  # runs without a window: state unchanged


@pytest.mark.usefixtures("one_thread")
def test_a_run_training_the_whitening_bias_resumes_bit_identically(tmp_path, cut_and_resume):
    """Cut mid-epoch 2 while the bias is still training (2.5-epoch window), resumed: the
    same weights as the uninterrupted run, and the bias moved from its data-set init."""
    from classlab.run.flow import train_run

    cfg = config.load(ROOT / "experiments" / "fast94.yaml", [
        "data.name=synthetic", "data.synthetic_size=256", "model.width=4", "train.epochs=3",
        "train.batch_size=32", "train.eval_batch_size=256", "train.threads=1",
        "train.progress=false", "train.precision=fp32", "train.channels_last=false",
        "optim.whiten_bias_epochs=2.5", "train.tta=none", "log.data_dynamics=false"])
    reference = train_run(cfg, out=tmp_path / "ref").run_dir
    assert_same_weights(reference, cut_and_resume(cfg, tmp_path / "cut"))
    cfg.optim.whiten_bias_epochs, cfg.train.epochs = 0.0, 1
    frozen = train_run(cfg, out=tmp_path / "frozen").run_dir  # its bias: the data-set init
    init = torch.load(frozen / "last.pt", weights_only=True)["model"]["whiten.bias"]
    trained = torch.load(reference / "last.pt", weights_only=True)["model"]["whiten.bias"]
    assert not torch.equal(trained, init)
