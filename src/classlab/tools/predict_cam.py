"""``classlab predict --cam METHOD``: one class-activation overlay per predicted picture, for
its top class, at the last layer the run's diagnosis shows (``diagnose.layers``)."""

from __future__ import annotations

from pathlib import Path

import torch

from classlab.config import ConfigError
from classlab.diagnose import CAMS, compute_cams
from classlab.rundir import save_figure


def write_overlays(lm, preds: list, method: str, folder: Path) -> Path:
    """``folder/<picture name>.cam.png`` for every prediction of ``preds``
    (:class:`classlab.tools.predict.Prediction`); returns the folder."""
    from matplotlib.figure import Figure

    from classlab.data.imagefolder import read_image

    if method not in CAMS:
        raise ConfigError(f"--cam: unknown method {method!r}; allowed: {', '.join(CAMS)}")
    layer = lm.cfg.diagnose.layers[-1]
    folder.mkdir(parents=True, exist_ok=True)
    for p in preds:
        img = read_image(p.path, lm.size, lm.cfg.data.resize)  # uint8 [H,W,3]
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].to(lm.device)
        target = torch.tensor([lm.classes.index(p.top[0][0])], device=x.device)
        cam = compute_cams(lm.model, lm.normalize(x), [layer], method, target,
                           amp=lm.amp)[layer][0].float().cpu().numpy()  # [H,W] in [0,1]
        fig = Figure(figsize=(3, 3.3))
        ax = fig.add_subplot()
        ax.imshow(img)
        ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{p.top[0][0]} {100 * p.top[0][1]:.1f}% ({CAMS[method].title}, "
                     f"{layer})", fontsize=8)
        ax.axis("off")
        save_figure(fig, folder / f"{_stem(p.path)}.cam.png", dpi=100)
    return folder


def _stem(path: Path) -> str:
    """A file name unique enough for pictures of the same name in different folders."""
    parent = path.parent.name
    return f"{parent}_{path.stem}" if parent else path.stem

