"""Faithfulness (deletion / insertion) and the model-randomisation sanity check against known
answers: an oracle map on a model whose decision is a known patch, hand-ranked correlations,
and a tiny model trained to find a patch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from classlab.diagnose.cams import compute_cams
from classlab.diagnose.faithfulness import (
    auc,
    faithfulness,
    fill_images,
    probability_curves,
    random_maps,
    relevance_masks,
    relevance_ranks,
    tie_keys,
)
from classlab.diagnose.sanity import (
    FLAG_RHO,
    average_ranks,
    cascade,
    randomisation_check,
    rank_correlation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


PATCH = (slice(8, 16), slice(8, 16))  # the 8x8 patch (64 of 1024 pixels) the model reads


class PatchModel(nn.Module):
    """Decides on a known patch only: logits [0, 4 * mean of channel 0 over PATCH]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0, PATCH[0], PATCH[1]].mean(dim=(1, 2))  # [N]
        return torch.stack([torch.zeros_like(m), 4 * m], dim=1)


def _patch_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, 3, 32, 32, generator=g)
    x[:, 0, PATCH[0], PATCH[1]] += 2.0  # normalised units: the patch is bright in channel 0
    return x


def test_auc_of_known_curves() -> None:
    curves = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0], [0.3, 0.3, 0.3, 0.3, 0.3],
                           [0.0, 1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(auc(curves), torch.tensor([0.5, 0.3, 0.875]))


def test_relevance_masks_take_the_most_relevant_pixels_first() -> None:
    maps = torch.arange(16.0).view(1, 4, 4)  # pixel 15 is the most relevant
    keys = tie_keys(1, (4, 4), torch.Generator().manual_seed(0), torch.device("cpu"))
    masks = relevance_masks(maps, 4, keys)  # [1,5,4,4]: 0, 4, 8, 12, 16 pixels
    assert masks.flatten(2).sum(2).tolist() == [[0, 4, 8, 12, 16]]
    assert masks[0, 1].flatten().nonzero()[:, 0].tolist() == [12, 13, 14, 15]
    assert bool((masks[:, 1:] >= masks[:, :-1]).all())  # nested: each step adds pixels
    # ties (a flat map) follow the random keys, not the raster order
    flat = relevance_masks(torch.zeros(1, 4, 4), 4, keys)[0, 1].flatten()
    first = keys[0].argsort()[:4]
    assert set(flat.nonzero()[:, 0].tolist()) == set(first.tolist())
    assert flat.nonzero()[:, 0].tolist() != [0, 1, 2, 3]


def test_fills() -> None:
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fill_images(x, "mean"), torch.zeros_like(x))
    flat = torch.full((1, 3, 32, 32), 0.7)
    torch.testing.assert_close(fill_images(flat, "blur"), flat)  # weights sum to 1
    blurred = fill_images(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < 0.5 * x.std()  # smoother


def test_oracle_map_has_the_hand_computed_deletion_and_insertion_areas() -> None:
    """Step 1 of 16 removes 64 pixels: exactly the patch for the oracle map, so p(class 1)
    drops at once from p0 = sigmoid(4 m) to sigmoid(0) = 1/2 (the mean fill is 0) and stays
    there; insertion is the mirror image. Trapezoids over 17 points 1/16 apart."""
    model, x = PatchModel(), _patch_images(6)
    targets = torch.ones(6, dtype=torch.long)
    oracle = torch.zeros(6, 32, 32)
    oracle[:, PATCH[0], PATCH[1]] = 1.0
    res = faithfulness(model, x, targets, {("oracle", "patch"): oracle}, {"patch": (8, 8)},
                       steps=16, fill="mean", seed=3)
    p0 = torch.sigmoid(4 * x[:, 0, PATCH[0], PATCH[1]].mean(dim=(1, 2))).double()
    want_del = ((p0 + 0.5) / 2 + 15 * 0.5) / 16
    want_ins = ((0.5 + p0) / 2 + 15 * p0) / 16
    torch.testing.assert_close(res.deletion[("oracle", "patch")], want_del, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.insertion[("oracle", "patch")], want_ins, atol=1e-6, rtol=0)
    # the random map (as coarse as an 8x8 layer) removes the patch only gradually
    rand_del, rand_ins = res.deletion[("random", "patch")], res.insertion[("random", "patch")]
    assert bool((rand_del > want_del).all()) and bool((rand_ins < want_ins).all())
    assert rand_del.mean() > want_del.mean() + 0.2 and rand_ins.mean() < want_ins.mean() - 0.05
    (row,) = res.rows({"patch": (8, 8)})
    assert row["better_than_chance"] and row["gain"] > 0.1 and row["images"] == 6
    # a map pointing away from the patch is worse than chance
    away = 1 - oracle
    bad = faithfulness(model, x, targets, {("away", "patch"): away}, {"patch": (8, 8)},
                       seed=3).rows({"patch": (8, 8)})[0]
    assert bad["gain"] < 0 and not bad["better_than_chance"]


def test_curves_are_batched_and_end_at_the_image_and_the_fill() -> None:
    model, x = PatchModel(), _patch_images(3, seed=1)
    targets = torch.ones(3, dtype=torch.long)
    keys = tie_keys(3, (32, 32), torch.Generator().manual_seed(0), torch.device("cpu"))
    maps = torch.stack([random_maps(3, (4, 4), (32, 32), torch.Generator().manual_seed(s),
                                    torch.device("cpu")) for s in range(2)])  # [2,3,32,32]
    ranks = torch.stack([relevance_ranks(m, keys) for m in maps])  # [2,3,1024]
    fill = fill_images(x, "mean")
    d1, i1 = probability_curves(model, x, targets, ranks, 8, fill, batch_size=5)
    d2, i2 = probability_curves(model, x, targets, ranks, 8, fill, batch_size=1000)
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(i1, i2)
    p0 = torch.sigmoid(4 * x[:, 0, PATCH[0], PATCH[1]].mean(dim=(1, 2)))
    torch.testing.assert_close(d1[:, :, 0], p0.expand(2, 3))
    torch.testing.assert_close(d1[:, :, -1], torch.full((2, 3), 0.5))
    # interior points equal the model on the images built by hand from the step's mask
    m = relevance_masks(maps[1], 8, keys)[2, 3]  # map 1, image 2, step 3: 384 pixels
    assert int(m.sum()) == 384
    by_hand = torch.stack([torch.where(m, fill[2], x[2]), torch.where(m, x[2], fill[2])])
    p_hand = torch.softmax(model(by_hand), 1)[:, 1]
    torch.testing.assert_close(torch.stack([d1[1, 2, 3], i1[1, 2, 3]]), p_hand)


# --------------------------------------------------------------------------- rank correlation


def test_rank_correlation_known_values() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    torch.testing.assert_close(rank_correlation(a, a), torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(rank_correlation(a, a.flip(1)),
                               torch.tensor([-1.0], dtype=torch.float64))
    # ties get average ranks: [0, 0, 1, 2] -> ranks [1.5, 1.5, 3, 4]
    assert average_ranks(torch.tensor([[0.0, 0.0, 1.0, 2.0]])).tolist() == [[1.5, 1.5, 3, 4]]
    # by hand: ranks x = [1.5,1.5,3,4], y = [1,2,3,4]; centred x = [-1,-1,.5,1.5],
    # y = [-1.5,-.5,.5,1.5]; sum xy = 1.5+.5+.25+2.25 = 4.5; |x|^2 = 4.5, |y|^2 = 5
    rho = rank_correlation(torch.tensor([[0.0, 0.0, 1.0, 2.0]]),
                           torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert rho.item() == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(rank_correlation(torch.zeros(1, 4), a[:, :4]).item())


# --------------------------------------------------------------------------- randomisation


class Finder(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global average -> linear: finds a bright patch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.pool(a).flatten(1))


def _patch_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16x16 noise images with a bright 4x4 patch somewhere: in channel 1 for class 0, in
    channel 2 for class 1. Returns images, labels, the patch masks [N,16,16] bool."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    top = torch.randint(0, 13, (n,), generator=g)[:, None, None]
    left = torch.randint(0, 13, (n,), generator=g)[:, None, None]
    rows, cols = torch.arange(16)[None, :, None], torch.arange(16)[None, None, :]
    where = (rows >= top) & (rows < top + 4) & (cols >= left) & (cols < left + 4)
    x[torch.arange(n), 1 + y] += 2.5 * where
    return x, y, where


@pytest.fixture(scope="module")
def finder() -> Finder:
    """A tiny model trained (Adam, 80 steps) until its decision depends on the patch."""
    torch.manual_seed(0)
    model = Finder()
    x, y, _ = _patch_task(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(80):
        idx = torch.arange(64) + 64 * (step % 8)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt, _ = _patch_task(200, seed=2)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.95, f"the tiny model did not learn the task ({acc:.2f})"
    return model.eval()


def test_gradcam_of_the_trained_model_beats_chance(finder: Finder) -> None:
    x, y, where = _patch_task(12, seed=3)
    maps = compute_cams(finder, x, ["act2"], "gradcam", y)
    res = faithfulness(finder, x, y, {("gradcam", "act2"): maps["act2"]}, {"act2": (16, 16)},
                       steps=8, seed=0)
    (row,) = res.rows({"act2": (16, 16)})
    assert row["better_than_chance"], row
    # and it points at the patch: the map is higher inside it than outside
    inside = (maps["act2"] * where).sum((1, 2)) / where.sum((1, 2))
    outside = (maps["act2"] * ~where).sum((1, 2)) / (~where).sum((1, 2))
    assert bool((inside > outside).float().mean() >= 0.9)


def test_randomisation_changes_the_maps_of_the_trained_model(finder: Finder) -> None:
    assert cascade(finder) == ["fc", "conv2", "conv1"]
    x, y, _ = _patch_task(10, seed=4)
    before = {k: v.clone() for k, v in finder.state_dict().items()}
    rng = torch.get_rng_state()

    def maps_fn(m: nn.Module) -> dict:
        return {("gradcam", "act2"): compute_cams(m, x, ["act2"], "gradcam", y)["act2"]}

    res = randomisation_check(finder, maps_fn, maps_fn(finder), seed=0)
    (row,) = res.rows()
    assert row["steps"] == ["fc", "conv2", "conv1"] and len(row["rho"]) == 3
    assert row["final_rho"] < FLAG_RHO and not row["flagged"]
    assert res.rho[("gradcam", "act2")].shape == (3, 10)
    assert res.first_maps[("gradcam", "act2")].shape == (3, 16, 16)
    # the trained model and the caller's random stream are untouched
    assert all(torch.equal(before[k], v) for k, v in finder.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    # reproducible: the same seed gives the same correlations
    again = randomisation_check(finder, maps_fn, maps_fn(finder), seed=0)
    torch.testing.assert_close(again.rho[("gradcam", "act2")], res.rho[("gradcam", "act2")],
                               equal_nan=True)


def test_a_map_that_ignores_the_model_is_flagged(finder: Finder) -> None:
    """An 'explanation' that is the image's own brightness never changes: rho = 1 at every
    step, so it is flagged as not depending on what the model learned."""
    x, _, _ = _patch_task(5, seed=5)

    def brightness(_m: nn.Module) -> dict:
        return {("brightness", "input"): x.sum(1)}

    res = randomisation_check(finder, brightness, brightness(finder))
    (row,) = res.rows()
    assert row["rho"] == pytest.approx([1.0, 1.0, 1.0]) and row["flagged"]
