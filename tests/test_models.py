"""Every model x norm runs forward and backward with finite gradients; pinned param counts."""

from __future__ import annotations

import pytest
import torch

from classlab.config import ModelConfig
from classlab.models import MODELS, NORMS, build_model, count_params

PINNED = {"resnet18": 11_173_962, "resnet34": 21_282_122}


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_finite(name, norm):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, norm=norm, width=8, gn_groups=4), 10)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    out.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # frozen by design (e.g. fastnet's whitening layer)
            assert p.grad is None, pname
            continue
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("norm", ["bn", "ln"])
@pytest.mark.parametrize("name", sorted(PINNED))
def test_param_counts_are_the_specs(name, norm):
    with torch.device("meta"):  # no memory or init time for 21M parameters
        model = build_model(ModelConfig(name=name, norm=norm), 10)
    assert count_params(model) == PINNED[name]


def test_norm_layers_are_what_the_names_say():
    bn = build_model(ModelConfig(norm="bn", width=8), 10)
    ln = build_model(ModelConfig(norm="ln", width=8), 10)
    gn = build_model(ModelConfig(norm="gn", width=8, gn_groups=4), 10)
    assert isinstance(bn.bn1, torch.nn.BatchNorm2d)
    assert isinstance(ln.bn1, torch.nn.GroupNorm) and ln.bn1.num_groups == 1
    assert isinstance(gn.bn1, torch.nn.GroupNorm) and gn.bn1.num_groups == 4


def output_shapes(model: torch.nn.Module, names: tuple[str, ...]) -> dict[str, tuple]:
    """Output shape of each named submodule for a [2,3,32,32] input."""
    shapes: dict[str, tuple] = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))) for n in names]
    try:
        model(torch.randn(2, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def test_stage_shapes():
    model = build_model(ModelConfig(width=8), 10).eval()
    shapes = output_shapes(model, ("layer1", "layer2", "layer3", "layer4"))
    assert shapes == {"layer1": (2, 8, 32, 32), "layer2": (2, 16, 16, 16),
                      "layer3": (2, 32, 8, 8), "layer4": (2, 64, 4, 4)}
