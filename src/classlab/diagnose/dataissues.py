"""Is it the data? Suspected label errors, the data map and forgetting events.

**Training set**, from the per-image training dynamics (data_dynamics.pt,
:mod:`classlab.engine.margins`; the values are of the augmented images trained on):

- area under the margin, AUM (Pleiss et al., NeurIPS 2020): the mean over epochs of the
  margin (logit of the given label minus the largest other logit). A label the network keeps
  disagreeing with has a negative AUM. **Criterion: flagged when AUM < 0**, i.e. on average
  over training the given label's logit stayed below another class's. The paper instead
  calibrates the threshold with "threshold samples" (a fake extra class given to a random
  subset, whose AUMs show what a wrong label looks like; flagged below their 99th
  percentile); that changes the network and what it trains on, so a fixed threshold of 0
  (the sign of the mean margin) stands in for it. Suggested label: the class most often
  the largest other logit in the epochs the image was wrong (all epochs if never wrong).
- the data map (Swayamdipta et al., EMNLP 2020): per image the confidence (mean over epochs
  of the softmax probability of the given label), the variability (its standard deviation
  over epochs, population) and the correctness (fraction of epochs right); regions: the
  third of the images with the highest variability are *ambiguous*; of the rest, those
  whose confidence is in the top third overall are *easy to learn*, those in the bottom
  third *hard to learn*.
- forgetting events (Toneva et al., ICLR 2019): how often an image goes from right to wrong
  between consecutive epochs.

**Test set**, by confident learning (Northcutt et al., JAIR 2021) on the out-of-sample test
predictions: per-class thresholds ``t_j`` (mean predicted probability of class j over the
images labelled j), the confident joint ``C[i][j]`` (images labelled i whose probability of
class j reaches ``t_j``, counted under the largest such j), calibrated so row i sums to the
count of label i, then **prune by noise rate**: for each given label i, the
``round(n_i * (1 - C[i][i] / sum_j C[i][j]))`` images labelled i with the largest margin
``max_{j != i} p_j - p_i`` are flagged, those the model predicts as their given label
excepted. Suggested label: that j.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classlab.rundir.datadyn import unpack_right
from classlab.stats import auroc

REGIONS = ("easy", "ambiguous", "hard")  # data map regions; "" for the images between
AUM_THRESHOLD = 0.0


# --------------------------------------------------------------------------- training dynamics


def area_under_margin(margin: np.ndarray) -> np.ndarray:
    """AUM [N] of margins [E,N]: the mean over the epochs the image was trained on (NaN
    entries: epochs it was not); NaN for an image never trained on."""
    m = np.asarray(margin, dtype=np.float64)
    seen = np.isfinite(m)
    n = seen.sum(0)
    total = np.where(seen, m, 0.0).sum(0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def data_map(prob: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, variability, correctness) [N] from probabilities of the given label
    [E,N] (NaN: not trained on that epoch) and right [E,N] bool."""
    p = np.asarray(prob, dtype=np.float64)
    seen = np.isfinite(p)
    n = np.maximum(seen.sum(0), 1)
    mean = np.where(seen, p, 0.0).sum(0) / n
    var = np.where(seen, (p - mean) ** 2, 0.0).sum(0) / n
    correct = (np.asarray(right) & seen).sum(0) / n
    never = seen.sum(0) == 0
    return (np.where(never, np.nan, mean), np.where(never, np.nan, np.sqrt(var)),
            np.where(never, np.nan, correct))


def forgetting_events(right: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """Per image [N], the epochs t with right at t-1 and wrong at t (both trained on)."""
    r = np.asarray(right, dtype=bool)
    s = np.ones_like(r) if seen is None else np.asarray(seen, dtype=bool)
    if r.shape[0] < 2:
        return np.zeros(r.shape[1], dtype=np.int64)
    return (r[:-1] & ~r[1:] & s[:-1] & s[1:]).sum(0).astype(np.int64)


def rival_mode(rival: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per image, the class most often the largest other logit in the epochs it was wrong
    (every epoch trained on when never wrong; ties: the lower class); -1 if never seen."""
    rv = np.asarray(rival, dtype=np.int64)
    k = int(rv.max()) + 1 if rv.size and rv.max() >= 0 else 1
    seen = rv >= 0
    wrong = seen & ~np.asarray(right, dtype=bool)
    use = np.where(wrong.any(0)[None, :], wrong, seen)
    counts = np.zeros((k, rv.shape[1]), dtype=np.int64)
    for c in range(k):
        counts[c] = ((rv == c) & use).sum(0)
    return np.where(use.any(0), counts.argmax(0), -1)


def regions(confidence: np.ndarray, variability: np.ndarray) -> np.ndarray:
    """The data map region of each image (see the module docstring): str [N]."""
    conf, var = np.asarray(confidence), np.asarray(variability)
    ok = np.isfinite(conf) & np.isfinite(var)
    out = np.full(len(conf), "", dtype=object)
    if not ok.any():
        return out
    v_hi = np.quantile(var[ok], 2 / 3)
    c_lo, c_hi = np.quantile(conf[ok], [1 / 3, 2 / 3])
    amb = ok & (var >= v_hi)
    out[amb] = "ambiguous"
    out[ok & ~amb & (conf >= c_hi)] = "easy"
    out[ok & ~amb & (conf <= c_lo)] = "hard"
    return out


@dataclass
class TrainDynamics:
    """data_dynamics.pt summarised per training image (rows in the record's order)."""

    index: np.ndarray  # training-split index
    labels: np.ndarray  # label trained on
    epochs: int
    aum: np.ndarray
    confidence: np.ndarray
    variability: np.ndarray
    correctness: np.ndarray
    forgetting: np.ndarray
    suggested: np.ndarray  # the rival class most often ahead
    region: np.ndarray  # "easy" / "ambiguous" / "hard" / ""

    @property
    def flagged(self) -> np.ndarray:
        """Rows suspected of a wrong label (AUM < 0), most suspect (lowest AUM) first."""
        rows = np.flatnonzero(np.isfinite(self.aum) & (self.aum < AUM_THRESHOLD))
        return rows[np.lexsort((self.index[rows], self.aum[rows]))]


def summarise(rec: dict) -> TrainDynamics:
    """Everything the report says about the training images, from a data_dynamics.pt."""
    margin = rec["margin"].float().numpy()
    prob = rec["prob"].float().numpy()
    right = unpack_right(rec)
    seen = np.isfinite(margin)
    conf, var, correct = data_map(prob, right)
    return TrainDynamics(rec["index"].numpy(), rec["labels"].numpy(), int(margin.shape[0]),
                         area_under_margin(margin), conf, var, correct,
                         forgetting_events(right, seen),
                         rival_mode(rec["rival"].numpy(), right), regions(conf, var))


# --------------------------------------------------------------------------- confident learning


def class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t [K]: the mean predicted probability of class j over the images labelled j (NaN for
    a class no image is labelled with)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    k = p.shape[1]
    return np.array([p[y == j, j].mean() if (y == j).any() else np.nan for j in range(k)])


def confident_joint(probs: np.ndarray, labels: np.ndarray,
                    thresholds: np.ndarray | None = None) -> np.ndarray:
    """C [K,K] int: C[i][j] counts the images labelled i whose probability of class j is at
    least t_j, each under the largest such probability (images above no threshold are not
    counted)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    t = class_thresholds(p, y) if thresholds is None else np.asarray(thresholds)
    above = p >= np.where(np.isfinite(t), t, np.inf)[None, :]
    j = np.where(above, p, -np.inf).argmax(1)
    has = above.any(1)
    k = p.shape[1]
    c = np.zeros((k, k), dtype=np.int64)
    np.add.at(c, (y[has], j[has]), 1)
    return c


def calibrated_joint(c: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Q [K,K]: the confident joint with row i rescaled to the count of label i, then
    normalised to sum to 1 (the estimated joint of given and true label)."""
    k = c.shape[0]
    n = np.bincount(np.asarray(labels), minlength=k).astype(np.float64)
    rows = c.sum(1, keepdims=True).astype(np.float64)
    cal = np.where(rows > 0, c / np.maximum(rows, 1) * n[:, None], 0.0)
    total = cal.sum()
    return cal / total if total > 0 else cal


def prune_by_noise_rate(probs: np.ndarray, labels: np.ndarray,
                        c: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged indices, suggested labels, margins), most suspect first: for each given
    label i, the round(n_i * off-diagonal share of row i of the confident joint) images
    labelled i with the largest margin max_{j != i} p_j - p_i, kept when that margin is
    positive (the model does not predict the given label)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    c = confident_joint(p, y) if c is None else c
    k = p.shape[1]
    others = p.copy()
    others[np.arange(len(y)), y] = -np.inf
    suggested = others.argmax(1)
    margin = others.max(1) - p[np.arange(len(y)), y]
    picked = []
    for i in range(k):
        members = np.flatnonzero(y == i)
        row = c[i].sum()
        if not len(members) or row == 0:
            continue
        count = int(round(len(members) * (1 - c[i, i] / row)))
        order = members[np.lexsort((members, -margin[members]))][:count]
        picked.append(order[margin[order] > 0])
    flagged = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    flagged = flagged[np.lexsort((flagged, -margin[flagged]))]
    return flagged, suggested[flagged], margin[flagged]


# --------------------------------------------------------------------------- against injected noise


def score_detector(scores: np.ndarray, flagged: np.ndarray, noisy: np.ndarray) -> dict:
    """How well a detector finds the images whose labels were changed: ``scores`` [N]
    (higher: more suspect; NaN: no score), ``flagged`` and ``noisy`` [N] bool. Precision
    and recall of the flagged set, AUROC of the ranking (Mann-Whitney U)."""
    ok = np.isfinite(scores)
    hit = int((flagged & noisy).sum())
    return {"noisy": int(noisy.sum()), "flagged": int(flagged.sum()), "hits": hit,
            "precision": hit / int(flagged.sum()) if flagged.any() else float("nan"),
            "recall": hit / int(noisy.sum()) if noisy.any() else float("nan"),
            "auroc": auroc(scores[ok], noisy[ok])}
