"""optim.name=muon: Newton-Schulz orthogonalisation against its scalar polynomial, Muon steps
on the filters, and plain SGD (as torch's) for every other parameter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from classlab.config import OptimConfig
from classlab.optim import build_optimizer
from classlab.optim.muon import NS_COEFFS, Muon, orthogonalize


@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (8, 8)])
def test_orthogonalize_maps_each_singular_value_through_the_quintic(shape):
    """X = U S V^T -> U p(S) V^T exactly, with p the 3-fold quintic of S / ||X||_F."""
    torch.manual_seed(0)
    g = torch.randn(*shape, dtype=torch.float64)
    u, s, vt = torch.linalg.svd(g, full_matrices=False)
    out = orthogonalize(g.float()).double()
    inner = u.T @ out @ vt.T  # diagonal if the singular vectors are kept
    x = s / g.norm()
    a, b, c = NS_COEFFS
    for _ in range(3):
        x = a * x + b * x**3 + c * x**5
    assert torch.allclose(inner, torch.diag(x), atol=2e-5)
    assert out.shape == g.shape


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(),
                         nn.LazyLinear(4, bias=True))


def _grads(net: nn.Module) -> None:
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    net(x).square().mean().backward()


def test_muon_filters_step_orthogonally_at_fixed_norm_and_the_rest_as_sgd():
    net = _net()
    net(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    cfg = OptimConfig(name="muon", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                      muon_lr=0.05, muon_momentum=0.6)
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, Muon)
    muon = [g for g in opt.param_groups if g["muon"]]
    assert [p.ndim for p in muon[0]["params"]] == [4] and muon[0]["weight_decay"] == 0.0
    ref_net = copy.deepcopy(net)
    ref_params = [p for p in ref_net.parameters() if p.ndim != 4]
    ref = torch.optim.SGD(ref_params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for n, o in ((net, opt), (ref_net, ref)):  # same weights and input: same gradients
        o.zero_grad()
        _grads(n)
        o.step()
    conv = net[0].weight
    # normalised to sqrt(8) before the step, then moved by lr * an orthogonal-ish update
    before = ref_net[0].weight
    moved = (conv - before * 8 ** 0.5 / before.norm()).norm().item()
    assert 0 < moved < 2 * 0.05 * 8 ** 0.5
    for p, q in zip([p for p in net.parameters() if p.ndim != 4], ref_params):
        assert torch.allclose(p, q, atol=1e-6)
    assert not torch.equal(conv, ref_net[0].weight)  # the filters did not take SGD steps


def test_muon_state_round_trips_for_resume():
    net = _net()
    net(torch.randn(2, 3, 6, 6))
    opt = build_optimizer(net, OptimConfig(name="muon"))
    _grads(net)
    opt.step()
    other = build_optimizer(net, OptimConfig(name="muon"))
    other.load_state_dict(opt.state_dict())
    for p in net.parameters():
        if p in opt.state:
            assert torch.equal(opt.state[p]["momentum_buffer"], other.state[p]["momentum_buffer"])


def _newton_schulz(g: torch.Tensor) -> torch.Tensor:
    """The published recipe, written out: scale to unit Frobenius norm, work on the wide
    orientation, then 3 iterations of X <- aX + (bA + cA^2)X with A = XX^T."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float() / (g.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(3):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return x.T if tall else x


@pytest.mark.parametrize("out_channels", [8, 40])  # wide and tall [out, in*kh*kw] banks
def test_muon_filter_update_is_lr_times_orthogonalised_nesterov_momentum(out_channels):
    """Three steps with different gradients, recomputed here: buffer b = mu*b + g, Nesterov
    step g + mu*b, bank renormalised to norm sqrt(out), then minus lr * NS(step)."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, out_channels, 3, bias=False)
    head = nn.Linear(out_channels * 4 * 4, 2)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head)
    lr, mu = 0.05, 0.6
    opt = build_optimizer(net, OptimConfig(name="muon", lr=0.1, muon_lr=lr, muon_momentum=mu,
                                           weight_decay=0.0))
    w = conv.weight.detach().clone()
    buf = torch.zeros_like(w)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(6, 3, 6, 6, generator=gen)).square().mean().backward()
        g = conv.weight.grad.detach().clone()
        opt.step()
        buf = mu * buf + g
        step = g + mu * buf
        update = _newton_schulz(step.reshape(out_channels, -1)).view(w.shape)
        renormalised = w * out_channels ** 0.5 / w.norm()
        assert renormalised.norm().item() == pytest.approx(out_channels ** 0.5, rel=1e-6)
        w = renormalised - lr * update
        assert torch.allclose(conv.weight, w, atol=1e-6, rtol=1e-5)
        # the bank the update was applied to had norm sqrt(out)
        assert (conv.weight.detach() + lr * update).norm().item() == pytest.approx(
            out_channels ** 0.5, rel=1e-5)
