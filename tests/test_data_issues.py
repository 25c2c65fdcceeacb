"""Is it the data? Known answers of the per-image training dynamics (margins, AUM, data map,
forgetting), confident learning, AUROC, injected label noise and exclusion (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from classlab.config import DataConfig
from classlab.data import DataError, load_splits
from classlab.data.labels import inject_noise, partners, quotas, read_exclusion
from classlab.diagnose.dataissues import (
    area_under_margin,
    calibrated_joint,
    class_thresholds,
    confident_joint,
    data_map,
    forgetting_events,
    prune_by_noise_rate,
    regions,
    rival_mode,
    score_detector,
    summarise,
)
from classlab.engine.margins import ImageDynamics
from classlab.rundir.datadyn import unpack_right
from classlab.stats import auroc

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]

# --------------------------------------------------------------------------- recording


def _recorder_with_two_epochs() -> ImageDynamics:
    """4 images, 3 classes; image 3 is never trained on. Two steps per epoch, out of order."""
    d = ImageDynamics(4, torch.device("cpu"))
    y = torch.tensor([0, 1, 2, 0])
    # epoch 1: margins 1, -2.5, 1 (rivals 1, 0, 0)
    d.add(torch.tensor([2, 0]), torch.tensor([[0.0, -1.0, 1.0], [2.0, 1.0, -1.0]]),
          y[[2, 0]])
    d.add(torch.tensor([1]), torch.tensor([[3.0, 0.5, 0.0]]), y[[1]])
    d.end_epoch()
    # epoch 2: margins 3, -0.5, -1 (rivals 2, 2, 1)
    d.add(torch.tensor([0, 1, 2]), torch.tensor([[4.0, 0.0, 1.0], [0.0, 1.5, 2.0],
                                                  [0.0, 1.0, 0.0]]), y[[0, 1, 2]])
    d.end_epoch()
    return d


def test_margins_probabilities_rivals_and_right_of_constructed_logits():
    d = _recorder_with_two_epochs()
    rec = d.record(torch.arange(4), torch.tensor([0, 1, 2, 0]))
    assert rec["margin"].dtype == torch.float16 and rec["right"].dtype == torch.uint8
    m = rec["margin"].float()
    assert m[:, :3].tolist() == [[1.0, -2.5, 1.0], [3.0, -0.5, -1.0]]
    assert torch.isnan(m[:, 3]).all()  # never trained on
    assert rec["rival"].tolist() == [[1, 0, 0, -1], [2, 2, 1, -1]]
    assert unpack_right(rec).tolist() == [[True, False, True, False],
                                          [True, False, False, False]]
    z = torch.tensor([2.0, 1.0, -1.0])
    assert rec["prob"][0, 0].item() == pytest.approx(torch.softmax(z, 0)[0].item(), abs=1e-3)
    assert area_under_margin(rec["margin"].float().numpy())[:3].tolist() == [2.0, -1.5, 0.0]
    assert math.isnan(area_under_margin(rec["margin"].float().numpy())[3])


def test_partial_epoch_round_trip_is_exact():
    d = ImageDynamics(3, torch.device("cpu"))
    d.add(torch.tensor([1]), torch.tensor([[0.3, 0.7, 0.1]]), torch.tensor([1]))
    state = d.partial_state()
    e = ImageDynamics(3, torch.device("cpu"))
    e.load_partial(state)
    for r in (d, e):
        r.add(torch.tensor([0, 2]), torch.tensor([[1.0, 0.2, 0.1], [0.1, 0.9, 0.3]]),
              torch.tensor([0, 2]))
        r.end_epoch()
    a, b = d.record(torch.arange(3), torch.zeros(3)), e.record(torch.arange(3), torch.zeros(3))
    for k in ("margin", "prob", "rival", "right"):
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match="another size"):
        ImageDynamics(4, torch.device("cpu")).load_partial(state)


def test_history_keeps_the_checkpoints_epochs_and_pads_missing_ones():
    rec = _recorder_with_two_epochs().record(torch.arange(4), torch.zeros(4))
    d = ImageDynamics(4, torch.device("cpu"))
    d.load_history(rec, 1)  # a checkpoint of epoch 1: epoch 2's row is dropped
    assert d.epochs == 1  # bit for bit (NaN included)
    assert torch.equal(d.margin[0].view(torch.int16), rec["margin"][0].view(torch.int16))
    d = ImageDynamics(4, torch.device("cpu"))
    d.load_history(rec, 3)  # recording was off for epoch 3: a NaN row
    assert d.epochs == 3 and torch.isnan(d.margin[2].float()).all()


def test_data_map_forgetting_rival_mode_and_regions():
    prob = np.array([[0.2, 0.9], [0.4, 0.9], [0.6, np.nan]])
    right = np.array([[1, 1], [0, 1], [1, 0]], dtype=bool)
    conf, var, correct = data_map(prob, right)
    assert conf.tolist() == pytest.approx([0.4, 0.9])
    assert var.tolist() == pytest.approx([math.sqrt(0.08 / 3), 0.0])
    assert correct.tolist() == pytest.approx([2 / 3, 1.0])  # epoch 3 of image 1: not seen
    seqs = np.array([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]], dtype=bool).T  # [E,N]
    assert forgetting_events(seqs).tolist() == [2, 0, 1]
    rival = np.array([[2, 1], [2, 0], [1, 0]])
    assert rival_mode(rival, np.array([[0, 1], [0, 1], [1, 1]], bool)).tolist() == [2, 0]
    conf = np.array([0.9, 0.95, 0.1, 0.05, 0.5, 0.5])
    var = np.array([0.01, 0.02, 0.01, 0.02, 0.4, 0.3])
    assert regions(conf, var).tolist() == ["easy", "easy", "hard", "hard", "ambiguous",
                                           "ambiguous"]


def test_summary_flags_negative_aum_most_doubtful_first():
    d = _recorder_with_two_epochs()
    rec = d.record(torch.tensor([10, 11, 12, 13]), torch.tensor([0, 1, 2, 0]))
    t = summarise(rec)
    assert t.aum[:3].tolist() == [2.0, -1.5, 0.0]
    assert t.flagged.tolist() == [1]  # AUM < 0; 0 is not below the threshold
    assert t.index[t.flagged].tolist() == [11] and t.suggested[1] in (0, 2)


# --------------------------------------------------------------------------- confident learning

PROBS = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1],  # labelled 0
                  [0.1, 0.8, 0.1], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4],  # labelled 1
                  [0.1, 0.1, 0.8], [0.05, 0.15, 0.8]])  # labelled 2
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])


def test_per_class_thresholds_and_confident_joint_of_a_hand_made_table():
    t = class_thresholds(PROBS, LABELS)
    assert t.tolist() == pytest.approx([1.7 / 3, 1.7 / 3, 0.8])
    c = confident_joint(PROBS, LABELS, t)
    # image 2 (labelled 0) is confidently 1; image 5 passes no threshold and is not counted
    assert c.tolist() == [[2, 1, 0], [0, 2, 0], [0, 0, 2]]
    q = calibrated_joint(c, LABELS)
    assert np.allclose(q, np.array([[2, 1, 0], [0, 3, 0], [0, 0, 2]]) / 8)
    # an image above two thresholds counts under its larger probability
    two = confident_joint(np.array([[0.6, 0.4]]), np.array([1]), np.array([0.5, 0.3]))
    assert two.tolist() == [[0, 0], [1, 0]]


def test_prune_by_noise_rate_flags_the_largest_margins_of_each_given_label():
    flagged, suggested, margin = prune_by_noise_rate(PROBS, LABELS)
    # row 0: round(3 * (1 - 2/3)) = 1 image, the one with the largest p_j - p_0
    assert flagged.tolist() == [2] and suggested.tolist() == [1]
    assert margin.tolist() == pytest.approx([0.7])


# --------------------------------------------------------------------------- AUROC


def test_auroc_is_mann_whitney_with_ties_counted_half():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auroc([1, 1, 2, 0], [True, False, True, False]) == 0.875
    assert math.isnan(auroc([1, 2], [True, True]))
    rng = np.random.default_rng(0)
    s, pos = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.3
    pairs = [(a > b) + 0.5 * (a == b) for a in s[pos] for b in s[~pos]]
    assert auroc(s, pos) == pytest.approx(np.mean(pairs))


def test_score_detector_precision_recall_auroc():
    scores = np.array([3.0, 2.0, 1.0, 0.0, np.nan])
    flagged = np.array([True, True, False, False, False])
    noisy = np.array([True, False, True, False, True])
    r = score_detector(scores, flagged, noisy)
    assert (r["hits"], r["precision"], r["recall"]) == (1, 0.5, 1 / 3)
    assert r["auroc"] == 0.75  # the NaN score is left out


# --------------------------------------------------------------------------- label noise


def _cfg(**kw) -> DataConfig:
    return DataConfig(name="synthetic", **kw)


def test_quotas_split_exactly():
    assert quotas(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]
    assert quotas(7, np.array([0.5, 0.25, 0.25])).sum() == 7


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.37])
def test_symmetric_noise_hits_the_rate_exactly_spread_over_classes_and_targets(rate):
    y = np.repeat(np.arange(10), 100)
    cfg = _cfg(label_noise=rate, label_noise_seed=3)
    noisy = inject_noise(y, cfg, [str(i) for i in range(10)])
    changed = noisy != y
    assert changed.sum() == round(rate * len(y))
    per_class = np.bincount(y[changed], minlength=10)
    assert per_class.max() - per_class.min() <= 1  # proportional to the (equal) class sizes
    for c in range(10):  # each class's changes spread evenly over the other 9 classes
        to = np.bincount(noisy[changed & (y == c)], minlength=10)
        assert to[c] == 0 and to.max() - to[np.arange(10) != c].min() <= 1
    assert np.array_equal(noisy, inject_noise(y, cfg, [str(i) for i in range(10)]))
    other = inject_noise(y, _cfg(label_noise=rate, label_noise_seed=4), [str(i) for i in range(10)])
    assert not np.array_equal(other, noisy)


def test_pair_noise_flips_each_cifar10_class_to_its_partner_only():
    y = np.repeat(np.arange(10), 50)
    noisy = inject_noise(y, _cfg(label_noise=0.2, label_noise_kind="pairs"), CIFAR10)
    changed = noisy != y
    assert changed.sum() == 100
    mate = partners(CIFAR10)
    assert [CIFAR10[mate[CIFAR10.index(c)]] for c in ("cat", "truck", "deer", "bird",
                                                      "airplane")] == \
        ["dog", "automobile", "horse", "frog", "ship"]
    assert np.array_equal(noisy[changed], mate[y[changed]])
    assert np.bincount(y[changed], minlength=10).tolist() == [10] * 10


def test_pair_noise_on_other_classes_pairs_ids_and_keeps_the_odd_one_out():
    y = np.repeat(np.arange(3), 100)
    noisy = inject_noise(y, _cfg(label_noise=0.1, label_noise_kind="pairs"), ["a", "b", "c"])
    changed = noisy != y
    assert changed.sum() == 30 and not changed[y == 2].any()
    assert np.array_equal(noisy[changed], 1 - y[changed])


def test_matrix_noise_gives_exact_counts_per_class():
    y = np.repeat(np.arange(3), 100)
    m = [[0.8, 0.2, 0.0], [0.0, 1.0, 0.0], [0.1, 0.1, 0.8]]
    noisy = inject_noise(y, _cfg(label_noise_kind="matrix", label_noise_matrix=m), ["a", "b", "c"])
    counts = np.zeros((3, 3), dtype=int)
    np.add.at(counts, (y, noisy), 1)
    assert counts.tolist() == [[80, 20, 0], [0, 100, 0], [10, 10, 80]]
    with pytest.raises(DataError, match=r"data.label_noise_matrix: 3x3, but synthetic has 2"):
        inject_noise(np.array([0, 1]), _cfg(label_noise_kind="matrix", label_noise_matrix=m),
                     ["a", "b"])


def test_noise_touches_only_the_training_split_and_is_recorded():
    cfg = _cfg(synthetic_size=200, label_noise=0.2, label_noise_seed=1)
    clean, noisy = load_splits(_cfg(synthetic_size=200)), load_splits(cfg)
    assert torch.equal(clean.val_y, noisy.val_y) and torch.equal(clean.test_y, noisy.test_y)
    assert torch.equal(noisy.train_y_true, clean.train_y)
    changed = torch.nonzero(noisy.train_y != clean.train_y)[:, 0]
    assert len(changed) == round(0.2 * len(clean.train_y))
    assert noisy.noise.tolist() == [[i, int(clean.train_y[i]), int(noisy.train_y[i])]
                                    for i in changed.tolist()]


# --------------------------------------------------------------------------- exclusion


def test_exclusion_removes_exactly_the_listed_images(tmp_path):
    base = load_splits(_cfg(synthetic_size=200))
    f = tmp_path / "issues.csv"
    f.write_text("split,index,given\ntrain,7,1\ntest,5,2\ntrain,3,0\ntrain,50,4\ntrain,7,1\n")
    ex = load_splits(_cfg(synthetic_size=200, exclude=str(f)))
    keep = [i for i in range(len(base.train_y)) if i not in (3, 7, 50)]
    assert ex.excluded.tolist() == [3, 7, 50]  # the test row is ignored, the repeat once
    assert ex.train_index.tolist() == keep
    assert torch.equal(ex.train_x, base.train_x[keep])
    assert torch.equal(ex.train_y, base.train_y[keep])
    assert torch.equal(ex.test_x, base.test_x) and torch.equal(ex.val_x, base.val_x)


def test_exclusion_file_formats_and_errors(tmp_path):
    f = tmp_path / "plain.csv"
    f.write_text("4\n2\n\n4\n")
    assert read_exclusion(f, 10).tolist() == [2, 4]
    f.write_text("index\n9\n10\n12\n")
    with pytest.raises(DataError, match=r"^data.exclude: .*index 10 is outside the training "
                       r"set \(0..9: .*; 1 more$"):
        read_exclusion(f, 10)
    f.write_text("index\nseven\n")
    with pytest.raises(DataError, match="data.exclude: .* line 2: 'seven' is not an image"):
        read_exclusion(f, 10)
    with pytest.raises(DataError, match="data.exclude: .*: no such file"):
        read_exclusion(tmp_path / "gone.csv", 10)
    f.write_text("0\n1\n")
    with pytest.raises(DataError, match="leaves out all 2 training images"):
        read_exclusion(f, 2)


def test_the_report_says_when_too_many_flags_mean_an_untrained_model_not_wrong_labels():
    from classlab.report.datasection import CAVEAT, mistakes_sentence

    def sentence(flagged: int) -> str:
        diag = {"data_issues": {"shown": 4, "shown_suspected": 4,
                                "test": {"flagged": flagged, "images": 100}}}
        return mistakes_sentence(diag).text

    assert CAVEAT in sentence(90)  # 90% of the test set "mislabelled": the model, not labels
    assert CAVEAT not in sentence(3)  # a few percent: plausible label errors
