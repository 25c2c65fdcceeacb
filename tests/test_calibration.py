"""classlab.diagnose.calibration: ECE / MCE on hand-built predictions, temperature scaling on
synthetic logits with a known temperature, the summary dict and the two figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from classlab.diagnose import calibration as cal

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _two_class(conf: float, n: int, n_right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows [conf, 1 - conf] (prediction: class 0, conf >= 0.5); the first n_right are right."""
    probs = torch.tensor([[conf, 1.0 - conf]], dtype=torch.float64).repeat(n, 1)
    labels = torch.ones(n, dtype=torch.int64)
    labels[:n_right] = 0
    return probs, labels


def _cat(*parts: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts])


def _synthetic(n: int, seed: int, k: int = 10, scale: float = 2.0):
    """True logits z [n, k] and labels drawn from softmax(z): softmax(z) is calibrated."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    y = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return z, y


@pytest.fixture(scope="module")
def true_logits():
    return _synthetic(20_000, seed=0)


# --------------------------------------------------------------------------- ECE / MCE


def test_perfectly_calibrated_two_bins_ece_zero():
    # 10 images at 0.7 with 7 right, 10 at 0.9 with 9 right: acc_b == conf_b in both bins.
    probs, labels = _cat(_two_class(0.7, 10, 7), _two_class(0.9, 10, 9))
    bins = cal.reliability_bins(probs, labels)
    assert (bins["count"] > 0).sum() == 2
    assert cal.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert cal.mce(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_always_over_confident():
    probs, labels = _two_class(0.9, 10, 5)  # says 90 %, is right 50 %
    assert cal.ece(probs, labels) == pytest.approx(0.4, abs=1e-12)
    assert cal.mce(probs, labels) == pytest.approx(0.4, abs=1e-12)


def test_two_bin_mixed_case_by_hand():
    # Bin 13 ((13/15, 14/15]): 4 images at 0.9, 3 right -> acc 0.75, gap 0.15.
    # Bin 8 ((8/15, 9/15]): 6 images at 0.6 (the right edge), 2 right -> gap 0.6 - 1/3.
    # ECE = 4/10 * 0.15 + 6/10 * (0.6 - 1/3) = 0.06 + 0.16 = 0.22; MCE = 0.6 - 1/3 = 4/15.
    probs, labels = _cat(_two_class(0.9, 4, 3), _two_class(0.6, 6, 2))
    bins = cal.reliability_bins(probs, labels, n_bins=15)
    assert bins["count"][13] == 4 and bins["count"][8] == 6
    assert bins["accuracy"][13] == pytest.approx(0.75)
    assert bins["accuracy"][8] == pytest.approx(1 / 3)
    assert bins["confidence"][8] == pytest.approx(0.6)
    assert cal.ece(probs, labels, n_bins=15) == pytest.approx(0.22, abs=1e-12)
    assert cal.mce(probs, labels, n_bins=15) == pytest.approx(4 / 15, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_values_go_to_the_lower_bin(dtype):
    # Bins are (b/B, (b+1)/B]: a confidence exactly on an edge belongs to the bin below it.
    # 0.5 and 0.25 are exact in binary; 0.6 is not, but float32 0.6 and float64 0.6 must
    # agree (edges are compared in the probs' own dtype).
    cases = [(0.5, 10, 4), (0.25, 4, 0), (0.75, 4, 2), (0.6, 15, 8), (1.0, 15, 14), (0.0, 15, 0)]
    for conf, n_bins, expected in cases:
        k = 3 if conf < 0.5 else 2
        rest = (1.0 - conf) / (k - 1) if conf >= 0.5 else 0.0
        # conf < 0.5 rows: [conf, 0, 0] - not normalised, but top-label confidence is conf.
        row = [conf] + [rest] * (k - 1)
        probs = torch.tensor([row], dtype=dtype)
        bins = cal.reliability_bins(probs, torch.tensor([0]), n_bins=n_bins)
        assert int(np.argmax(bins["count"])) == expected, (conf, n_bins, bins["count"])
        assert bins["count"].sum() == 1


def test_edges_are_b_over_B():
    edges = cal.reliability_bins(*_two_class(0.9, 3, 1), n_bins=15)["edges"]
    assert edges.shape == (16,)
    assert edges[0] == 0.0 and edges[-1] == 1.0
    assert edges[9] == 0.6  # the double nearest 9/15, the same as the literal 0.6


def test_bins_counts_sum_to_n_and_empty_bins_are_nan():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(1000, 10, generator=g) * 3, dim=1)
    labels = torch.randint(0, 10, (1000,), generator=g)
    bins = cal.reliability_bins(probs, labels, n_bins=15)
    count = bins["count"]
    assert count.dtype == np.int64 and count.shape == (15,)
    assert count.sum() == 1000
    empty = count == 0
    assert empty[0]  # top-label conf of 10 classes is >= 0.1 > 1/15
    assert np.isnan(bins["accuracy"][empty]).all() and np.isnan(bins["confidence"][empty]).all()
    assert not np.isnan(bins["accuracy"][~empty]).any()
    # Each non-empty bin's mean confidence lies inside that bin.
    lo, hi = bins["edges"][:-1][~empty], bins["edges"][1:][~empty]
    conf = bins["confidence"][~empty]
    assert ((conf > lo) & (conf <= hi)).all()


def test_bins_match_a_loop_over_images():
    g = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(300, 5, generator=g) * 2, dim=1).double()
    labels = torch.randint(0, 5, (300,), generator=g)
    bins = cal.reliability_bins(probs, labels, n_bins=7)
    count, right, conf_sum = np.zeros(7, int), np.zeros(7), np.zeros(7)
    for p, y in zip(probs.tolist(), labels.tolist()):
        c = max(p)
        b = max(math.ceil(c * 7) - 1, 0)
        count[b] += 1
        right[b] += p.index(c) == y
        conf_sum[b] += c
    assert bins["count"].tolist() == count.tolist()
    full = count > 0
    np.testing.assert_allclose(bins["accuracy"][full], right[full] / count[full])
    np.testing.assert_allclose(bins["confidence"][full], conf_sum[full] / count[full])


def test_bad_inputs_are_rejected():
    probs, labels = _two_class(0.9, 4, 2)
    with pytest.raises(ValueError, match="logits"):
        cal.ece(probs * 5, labels)  # confidences above 1: logits passed as probabilities
    with pytest.raises(ValueError, match="shape"):
        cal.ece(probs, labels[:3])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        cal.ece(probs, labels + 5)
    with pytest.raises(ValueError, match="n_bins"):
        cal.ece(probs, labels, n_bins=0)
    with pytest.raises(ValueError, match="temperature"):
        cal.apply_temperature(probs, 0.0)


# --------------------------------------------------------------------------- temperature


def test_fit_temperature_recovers_over_confidence(true_logits):
    z, y = true_logits
    t = cal.fit_temperature(z * 2.5, y)  # softmax(z * 2.5 / 2.5) is the true distribution
    assert t == pytest.approx(2.5, rel=0.05)
    before = cal.ece(torch.softmax(z * 2.5, dim=1), y)
    after = cal.ece(cal.apply_temperature(z * 2.5, t), y)
    assert before > 0.1  # genuinely over-confident to begin with
    assert after < before / 4


def test_fit_temperature_recovers_under_confidence(true_logits):
    z, y = true_logits
    assert cal.fit_temperature(z / 2, y) == pytest.approx(0.5, rel=0.05)


def test_fit_temperature_float32_log_probs_and_determinism(true_logits):
    z, y = true_logits
    logits = (z * 2.5).float()
    t = cal.fit_temperature(logits, y)
    assert cal.fit_temperature(logits, y) == t  # no randomness
    # Log-probabilities are logits shifted per row: same NLL, same T.
    log_probs = torch.log(torch.softmax(logits, dim=1).clamp_min(1e-30))
    assert cal.fit_temperature(log_probs, y) == pytest.approx(t, rel=1e-4)


def test_fit_temperature_is_the_nll_minimum(true_logits):
    z, y = true_logits
    logits = z[:2000] * 1.7
    t = cal.fit_temperature(logits, y[:2000])

    def nll(temp: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / temp, y[:2000]))

    assert nll(t) <= nll(t * 1.01) and nll(t) <= nll(t / 1.01)


def test_fit_temperature_separable_hits_lower_bound():
    # Every image right with a margin: the NLL keeps falling as T -> 0.
    labels = torch.arange(6) % 3
    logits = torch.nn.functional.one_hot(labels, 3).double() * 4.0
    assert cal.fit_temperature(logits, labels) == cal.T_MIN  # exactly: the summary says so


def test_fit_temperature_always_wrong_hits_upper_bound_and_the_note_says_so():
    # Every image confidently wrong: the NLL keeps falling as T grows (towards uniform).
    labels = torch.arange(6) % 3
    logits = torch.nn.functional.one_hot((labels + 1) % 3, 3).double() * 4.0
    assert cal.fit_temperature(logits, labels) == cal.T_MAX
    probs = torch.softmax(logits, 1).float()
    summary = cal.calibration_summary(probs, labels, logits, labels, n_bins=15)
    assert summary["temperature"] == cal.T_MAX and "(at the search bound)" in summary["note"]


def test_fit_temperature_constant_rows_give_one():
    assert cal.fit_temperature(torch.zeros(5, 4), torch.arange(5) % 4) == 1.0


def test_apply_temperature():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(50, 7, generator=g)
    p1 = cal.apply_temperature(logits, 1.0)
    torch.testing.assert_close(p1, torch.softmax(logits, dim=1))
    p3 = cal.apply_temperature(logits, 3.0)
    assert p3.shape == (50, 7) and p3.dtype == torch.float32
    torch.testing.assert_close(p3.sum(dim=1), torch.ones(50))
    assert torch.equal(p3.argmax(dim=1), logits.argmax(dim=1))
    assert (p3.max(dim=1).values < p1.max(dim=1).values).all()  # T > 1 softens


# --------------------------------------------------------------------------- summary


def test_summary_without_validation(true_logits):
    z, y = true_logits
    probs = torch.softmax(z * 2.5, dim=1)
    s = cal.calibration_summary(probs, y)
    assert s["temperature"] is None
    assert s["ece_scaled"] is None and s["mce_scaled"] is None
    assert s["note"] == "no validation split: temperature scaling skipped"
    assert s["n"] == 20_000
    assert s["ece"] == pytest.approx(cal.ece(probs, y))
    assert s["mce"] == pytest.approx(cal.mce(probs, y))
    json.dumps(s, allow_nan=False)


def test_summary_with_validation(true_logits):
    z_val, y_val = true_logits
    z_test, y_test = _synthetic(10_000, seed=1)
    test_probs = torch.softmax(z_test * 2.5, dim=1).float()  # stored as a model would
    s = cal.calibration_summary(test_probs, y_test, z_val * 2.5, y_val)
    # T comes from the validation set alone.
    assert s["temperature"] == cal.fit_temperature(z_val * 2.5, y_val)
    assert s["temperature"] == pytest.approx(2.5, rel=0.05)
    assert s["ece_scaled"] < s["ece"] / 4
    assert s["mce_scaled"] is not None
    assert "validation" in s["note"] and "\n" not in s["note"]
    text = json.dumps(s, allow_nan=False)
    back = json.loads(text)
    assert sum(back["bins"]["count"]) == 10_000
    assert len(back["bins"]["edges"]) == 16
    empty = [i for i, c in enumerate(back["bins"]["count"]) if c == 0]
    assert empty and all(back["bins"]["accuracy"][i] is None for i in empty)


def test_summary_test_labels_do_not_move_temperature(true_logits):
    z_val, y_val = true_logits
    z_test, y_test = _synthetic(2_000, seed=2)
    probs = torch.softmax(z_test, dim=1)
    a = cal.calibration_summary(probs, y_test, z_val * 2.5, y_val)
    b = cal.calibration_summary(probs, (y_test + 1) % 10, z_val * 2.5, y_val)
    assert a["temperature"] == b["temperature"]
    assert a["ece"] != b["ece"]


def test_summary_needs_both_validation_parts(true_logits):
    z, y = true_logits
    with pytest.raises(ValueError, match="both"):
        cal.calibration_summary(torch.softmax(z, dim=1), y, val_logits=z)


# --------------------------------------------------------------------------- figures


def _assert_png_not_blank(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].var()) > 0


def test_plot_reliability_writes_png(tmp_path, true_logits):
    z, y = true_logits
    probs = torch.softmax(z * 2.5, dim=1)
    out = tmp_path / "reliability.png"
    cal.plot_reliability(cal.reliability_bins(probs, y), out, "synthetic, over-confident")
    _assert_png_not_blank(out)


def test_plot_reliability_from_summary_with_scaled_panel(tmp_path, true_logits):
    z_val, y_val = true_logits
    z_test, y_test = _synthetic(2_000, seed=6)
    s = cal.calibration_summary(torch.softmax(z_test * 2.5, dim=1), y_test, z_val * 2.5, y_val)
    single, double = tmp_path / "a" / "one.png", tmp_path / "two.png"
    cal.plot_reliability(s["bins"], single, "from JSON lists")  # None marks empty bins
    cal.plot_reliability(s["bins"], double, "before", bins_scaled=s["bins_scaled"])
    _assert_png_not_blank(single)
    _assert_png_not_blank(double)
    assert imread(double).shape[1] > imread(single).shape[1]  # the second panel is beside it


def test_plot_confidence_hist_writes_png(tmp_path, true_logits):
    z, y = true_logits
    conf, correct = cal.confidence_and_correct(torch.softmax(z, dim=1), y)
    assert conf.shape == correct.shape == (20_000,) and correct.dtype == bool
    out = tmp_path / "hist.png"
    cal.plot_confidence_hist(conf, correct, out, "synthetic, calibrated")
    _assert_png_not_blank(out)
