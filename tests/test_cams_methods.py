"""The CAM methods added to Grad-CAM, Grad-CAM++ and LayerCAM (XGrad-CAM, HiResCAM, Score-CAM,
Eigen-CAM), each against a per-image computation written from its paper's definition; the
registry's contract (what a method needs, layer checks with one-line errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import count_hooks
from torch import nn

from classlab.config.schema import CAM_TITLES
from classlab.diagnose import CAMS, DiagnoseError
from classlab.diagnose.cams import check_layers, compute_cams, compute_cams_by_method
from classlab.models import resnet18
from classlab.report.names import cam_name

pytestmark = pytest.mark.usefixtures("one_thread")


def _minmax(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[h,w] -> bilinear to ``size``, min-max to [0,1] (flat: zeros), as compute_cams does."""
    up = F.interpolate(cam[None, None].float(), size=size, mode="bilinear",
                       align_corners=False)[0, 0]
    span = up.max() - up.min()
    return (up - up.min()) / span if span > 0 else torch.zeros_like(up)


def _activation_and_gradient(model: nn.Module, x1: torch.Tensor, layer: str,
                             target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image [1,3,H,W]: A [K,h,w] at ``layer`` and d logit_target / dA."""
    store: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, o: store.update(a=o))
    try:
        logits = model(x1)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(logits[0, target], store["a"])
    return store["a"][0].detach(), g[0]


def _reference(model: nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor,
               method: str) -> torch.Tensor:
    """Each image on its own, each channel k in a Python loop, from the definitions."""
    size = tuple(x.shape[-2:])
    out = []
    for i in range(len(x)):
        a, g = _activation_and_gradient(model, x[i:i + 1], layer, int(targets[i]))
        k, h, w = a.shape
        cam = torch.zeros(h, w)
        if method == "xgradcam":  # Fu et al. 2020, eq. for alpha_k
            for c in range(k):
                total = a[c].sum()
                alpha = (a[c] * g[c]).sum() / total if total != 0 else 0.0
                cam += alpha * a[c]
        elif method == "hirescam":  # Draelos & Carin 2020: element-wise gradient x activation
            for c in range(k):
                cam += g[c] * a[c]
        elif method == "eigencam":  # Muhammad & Yeasin 2020: O v_1 (numpy SVD, float64)
            o = a.reshape(k, h * w).T.double().numpy()  # [h*w, K]
            _, _, vt = np.linalg.svd(o, full_matrices=False)
            proj = o @ vt[0]
            proj = -proj if proj.sum() < 0 else proj
            cam = torch.from_numpy(proj.reshape(h, w)).float()
        elif method == "scorecam":  # Wang et al. 2020: one masked forward pass per channel
            with torch.no_grad():
                base = torch.softmax(model(torch.zeros_like(x[i:i + 1])), 1)[0, targets[i]]
                for c in range(k):
                    mask = _minmax(a[c], size)
                    p = torch.softmax(model(x[i:i + 1] * mask), 1)[0, targets[i]]
                    cam += (p - base) * a[c]
        out.append(_minmax(torch.relu(cam), size))
    return torch.stack(out)


@pytest.mark.parametrize("method", ["xgradcam", "hirescam", "eigencam", "scorecam"])
def test_new_methods_match_a_per_image_reference(net: nn.Module, method: str) -> None:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        targets = net(x).argmax(1)  # the predicted classes: few flat maps
    layers = ["layer2", "layer3"]  # 8 and 16 channels at 16x16 and 8x8
    maps = compute_cams(net, x, layers, method, targets, batch_size=7)  # uneven chunks
    live = 0
    for layer in layers:
        ref = _reference(net, x, layer, targets, method)
        torch.testing.assert_close(maps[layer], ref, atol=5e-5, rtol=1e-4)
        live += int((ref.flatten(1).amax(1) > 0).sum())
    assert live >= 5, "degenerate test input: most maps are flat"
    assert count_hooks(net) == 0 and not net.training


def test_hirescam_is_gradcam_where_the_gradient_is_uniform() -> None:
    """Behind global average pooling and a linear layer, dy_c/dA_k(i,j) = W_ck / (h w) at every
    position, so HiResCAM, XGrad-CAM and Grad-CAM give the same map (a known identity)."""
    torch.manual_seed(1)
    model = resnet18(num_classes=10, norm_layer=nn.BatchNorm2d, width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = compute_cams_by_method(model, x, ["layer4"], ["gradcam", "hirescam", "xgradcam"])
    torch.testing.assert_close(maps["hirescam"]["layer4"], maps["gradcam"]["layer4"])
    torch.testing.assert_close(maps["xgradcam"]["layer4"], maps["gradcam"]["layer4"])


def test_eigencam_ignores_the_target_and_needs_no_gradient(net: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    a = compute_cams(net, x, ["layer3"], "eigencam", torch.tensor([0, 1]))["layer3"]
    b = compute_cams(net, x, ["layer3"], "eigencam", torch.tensor([9, 4]))["layer3"]
    torch.testing.assert_close(a, b)
    assert CAMS["eigencam"].needs == "nothing" and not CAMS["eigencam"].class_specific
    assert all(p.grad is None for p in net.parameters())


def test_scorecam_scores_each_distinct_image_once(net: nn.Module) -> None:
    """The same image twice (two targets, as for cam_pred_vs_true) costs its masked forward
    passes once: the model sees 2 images (the CAM pass), 1 baseline and 1 x 16 masked
    images at layer3 (16 channels); the maps equal those of the images computed alone."""
    x1 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    seen: list[int] = []
    handle = net.register_forward_hook(lambda _m, i, _o: seen.append(len(i[0])))
    try:
        both = compute_cams(net, torch.cat([x1, x1]), ["layer3"], "scorecam",
                            torch.tensor([3, 8]))["layer3"]
    finally:
        handle.remove()
    assert sum(seen) == 2 + 1 + 16
    for i, t in enumerate((3, 8)):
        alone = compute_cams(net, x1, ["layer3"], "scorecam", torch.tensor([t]))["layer3"]
        torch.testing.assert_close(both[i:i + 1], alone)


def test_several_methods_share_one_forward_pass(net: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    calls: list[int] = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        maps = compute_cams_by_method(net, x, ["layer2", "layer4"],
                                      ["gradcam", "hirescam", "xgradcam", "eigencam"])
    finally:
        handle.remove()
    assert len(calls) == 1 and set(maps) == {"gradcam", "hirescam", "xgradcam", "eigencam"}
    for m, per in maps.items():
        torch.testing.assert_close(per["layer2"], compute_cams(net, x, ["layer2"], m)["layer2"])


def test_display_names_agree() -> None:
    assert {m: CAMS[m].title for m in CAMS} == CAM_TITLES
    assert {m: cam_name(m) for m in CAMS} == CAM_TITLES


# --------------------------------------------------------------------------- layer checks


def test_layer_checks_give_map_sizes_and_one_line_errors(net: nn.Module) -> None:
    cells = check_layers(net, ["layer1", "layer4", "pool"], ["gradcam"], (32, 32))
    assert cells == {"layer1": (32, 32), "layer4": (4, 4), "pool": (1, 1)}
    with pytest.raises(DiagnoseError) as e:
        check_layers(net, ["layer4", "pool"], ["gradcam", "scorecam"], (32, 32))
    assert str(e.value) == ("diagnose.layers: 'pool' gives a 1x1 map, too small for "
                            "scorecam's masks (needs at least 2 cells)")
    with pytest.raises(DiagnoseError, match=r"'linear' outputs \[10\] per image, not a "
                                            r"\[channels, h, w\] feature map; e\.g\. conv1"):
        check_layers(net, ["linear"], ["gradcam"], (32, 32))
    with pytest.raises(DiagnoseError, match="too small for eigencam"):
        compute_cams(net, torch.randn(1, 3, 32, 32), ["pool"], "eigencam")
    with pytest.raises(DiagnoseError, match="unknown method 'cam'; allowed: eigencam, "
                                            "gradcam, gradcampp, hirescam"):
        compute_cams(net, torch.randn(1, 3, 32, 32), ["layer1"], "cam")
    assert count_hooks(net) == 0 and not net.training


def test_layer_checks_run_on_a_meta_skeleton() -> None:
    """diagnose_run checks the layers before loading any data, on a meta-device model."""
    from classlab.config import ModelConfig
    from classlab.models import build_model

    with torch.device("meta"):
        model = build_model(ModelConfig(name="fastnet", width=8), 10)
    cells = check_layers(model, ["block1", "block2", "block3"], list(CAMS), (32, 32))
    assert cells == {"block1": (15, 15), "block2": (7, 7), "block3": (3, 3)}
