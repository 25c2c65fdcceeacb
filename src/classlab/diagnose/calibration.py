"""Calibration: are a classifier's confidences honest?

A classifier is *calibrated* when, among the images it labels with top-label confidence p,
a fraction p is right (Guo et al. 2017, "On Calibration of Modern Neural Networks"). This
module measures that on held-out predictions and repairs it with temperature scaling.

Measuring (Naeini et al. 2015; Guo et al. 2017, section 2). The top-label confidence of image
n is ``conf_n = max_k probs[n, k]``, its prediction ``argmax_k probs[n, k]``. Confidences are
put into B equal-width bins, bin b (0-based) holding conf in ``(b/B, (b+1)/B]`` (conf exactly
0 goes to bin 0). With n_b images in bin b, acc_b the fraction of them that are right and
conf_b their mean confidence::

    ECE = sum_b (n_b / N) * |acc_b - conf_b|        (a fraction, 0..1)
    MCE = max_{b : n_b > 0} |acc_b - conf_b|        (a fraction, 0..1)

Repairing (Guo et al. 2017, section 4.2). Temperature scaling divides every logit by one
scalar T > 0 fitted to minimise the negative log-likelihood on a validation set: T > 1 softens
over-confident predictions, T < 1 sharpens under-confident ones, and the argmax (hence the
accuracy) never changes. The test set must never influence T.

Logits or log-probabilities: softmax is shift-invariant per row (softmax(z + c) = softmax(z)
for any per-row constant c) and ``log softmax(z) = z - logsumexp(z)`` is such a shift, so
log-probabilities are valid logits: stored softmax outputs can be scaled via
``torch.log(probs.clamp_min(1e-30))`` (the clamp only keeps exact zeros finite).

Plots use :class:`matplotlib.figure.Figure` directly (never pyplot), so there is no global
figure state to leak between calls or threads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from classlab.rundir import save_figure

__all__ = [
    "apply_temperature",
    "calibration_summary",
    "confidence_and_correct",
    "ece",
    "fit_temperature",
    "mce",
    "plot_confidence_hist",
    "plot_reliability",
    "reliability_bins",
    "reliability_figure",
]

# Search interval for T (Guo et al. report fitted T of roughly 1..3 for modern networks;
# this leaves ample room on both sides while keeping logits / T finite in float64).
T_MIN, T_MAX = 0.05, 20.0
_LOG_FLOOR = 1e-30  # probabilities clamped to this before log(): exact zeros stay finite
_GOLDEN_TOL = 1e-7  # width of the final log-T bracket (relative precision of T ~ 1e-7)
_NEWTON_STEPS = 4

_RIGHT, _WRONG, _GAP = "tab:blue", "tab:red", "tab:red"


# --------------------------------------------------------------------------- input checks


def _check_labels(labels: torch.Tensor, n: int, k: int) -> torch.Tensor:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape [{n}], got {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    labels = labels.long()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k}), got [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    return labels


def _check_scores(x: torch.Tensor, labels: torch.Tensor, what: str) -> torch.Tensor:
    """Shape / finiteness checks shared by probabilities and logits; returns int64 labels."""
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{what} must have shape [N, K], got {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty: calibration needs at least one image")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{what} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    return _check_labels(labels, x.shape[0], x.shape[1])


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


# --------------------------------------------------------------------------- measuring


def _top_label(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-label confidence [N] (probs' dtype, at least float32) and correctness [N] bool."""
    labels = _check_scores(probs, labels, "probs")
    # float16/bfloat16 are widened so that bin edges are compared at a sensible precision.
    p = probs.detach().cpu()
    if p.dtype not in (torch.float32, torch.float64):
        p = p.float()
    conf, pred = p.max(dim=1)  # ties: torch returns the first maximal index
    # A little slack for rounding in a softmax; anything further out is not a probability
    # (most likely logits were passed where probabilities belong).
    if bool((conf < 0).any()) or bool((conf > 1 + 1e-6).any()):
        raise ValueError("probs must be probabilities in [0, 1] (did you pass logits? "
                         "use apply_temperature(logits, 1.0))")
    return conf.clamp(0.0, 1.0), pred == labels.cpu()


def confidence_and_correct(probs: torch.Tensor,
                           labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness, as numpy, for :func:`plot_confidence_hist`.

    Args:
        probs: [N, K] float, rows are probability vectors.
        labels: [N] int64 true class indices.

    Returns:
        ``(conf, correct)``: conf [N] float64 = max_k probs[n, k] (a probability, 0..1);
        correct [N] bool = (argmax_k probs[n, k] == labels[n]).
    """
    conf, correct = _top_label(probs, labels)
    return conf.double().numpy(), correct.numpy()


def bin_edges(n_bins: int) -> np.ndarray:
    """[B+1] float64 equal-width edges b/B on [0, 1]; bin b is (edges[b], edges[b+1]]."""
    _check_n_bins(n_bins)
    # b / B (one correctly rounded division each) rather than linspace, so that an edge is
    # exactly the double nearest b/B and "0.6 with 15 bins" means the same thing everywhere.
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Per-bin counts, mean confidence and accuracy over equal-width confidence bins.

    Bin b (0-based, B = n_bins) holds the images whose top-label confidence
    conf_n = max_k probs[n, k] lies in ``(b/B, (b+1)/B]``; conf exactly 0 goes to bin 0.
    An image is right when argmax_k probs[n, k] == labels[n] (ties: the lowest class index).
    Edges are compared in probs' own dtype (float32 or float64), so a stored float32 0.6 sits
    on the 9/15 edge (in bin 8) just as a float64 0.6 does.

    Args:
        probs: [N, K] float, rows are probability vectors (softmax outputs).
        labels: [N] int64 true class indices in [0, K).
        n_bins: B, number of equal-width bins on [0, 1].

    Returns:
        dict of numpy arrays:
        ``"count"`` [B] int64, images per bin (sums to N);
        ``"confidence"`` [B] float64, mean top-label confidence conf_b (NaN where empty);
        ``"accuracy"`` [B] float64, fraction right acc_b, 0..1 (NaN where empty);
        ``"edges"`` [B+1] float64, the bin edges b/B.
    """
    _check_n_bins(n_bins)
    conf, correct = _top_label(probs, labels)
    edges = bin_edges(n_bins)
    # searchsorted(right=False) gives j with edges[j-1] < conf <= edges[j]: bin j-1, i.e.
    # right-closed bins; conf == 0 gives j = 0, folded into bin 0.
    j = torch.searchsorted(torch.from_numpy(edges).to(conf.dtype), conf, right=False)
    idx = (j - 1).clamp_(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf.double(), minlength=n_bins)
    right_sum = torch.bincount(idx, weights=correct.double(), minlength=n_bins)
    count_np = count.numpy().astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN marks empty bins
        mean_conf = conf_sum.numpy() / count_np
        acc = right_sum.numpy() / count_np
    return {"count": count_np, "confidence": mean_conf, "accuracy": acc, "edges": edges}


def _gaps(bins: dict) -> tuple[np.ndarray, np.ndarray]:
    """(|acc_b - conf_b| [B'], n_b [B']) over the non-empty bins only."""
    count = np.asarray(bins["count"], dtype=np.int64)
    acc = np.asarray(bins["accuracy"], dtype=np.float64)  # None (from JSON) -> NaN
    conf = np.asarray(bins["confidence"], dtype=np.float64)
    full = count > 0
    return np.abs(acc[full] - conf[full]), count[full]


def ece_from_bins(bins: dict) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| from a :func:`reliability_bins` dict (0..1)."""
    gap, n = _gaps(bins)
    return float((gap * n).sum() / n.sum())


def mce_from_bins(bins: dict) -> float:
    """MCE = max over non-empty bins of |acc_b - conf_b| (0..1)."""
    gap, _ = _gaps(bins)
    return float(gap.max())


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Naeini et al. 2015), a fraction in [0, 1].

    ECE = sum_b (n_b / N) * |acc_b - conf_b| over the bins of :func:`reliability_bins`:
    the image-weighted mean gap between accuracy and confidence. Multiply by 100 for percent.

    Args:
        probs: [N, K] float probabilities; labels: [N] int64; n_bins: B.
    """
    return ece_from_bins(reliability_bins(probs, labels, n_bins))


def mce(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Maximum calibration error, max_{b: n_b > 0} |acc_b - conf_b|, a fraction in [0, 1].

    The worst bin, however few images it holds, so it is noisy for small N.

    Args:
        probs: [N, K] float probabilities; labels: [N] int64; n_bins: B.
    """
    return mce_from_bins(reliability_bins(probs, labels, n_bins))


# --------------------------------------------------------------------------- temperature


class _NLL:
    """Mean NLL of softmax(s * z) and its derivatives in s = 1/T, all in float64.

    f(s) = mean_n [logsumexp_k(s z_nk) - s z_n,y_n] is convex in s (a log-sum-exp of
    functions linear in s, minus a linear term), with
    f'(s) = mean_n [E_p[z_n] - z_n,y_n] and f''(s) = mean_n Var_p[z_n] >= 0, p = softmax(s z_n).
    """

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        z = logits.detach().cpu().double()
        # Shift each row so its max is 0 (allowed: softmax is shift-invariant); keeps
        # exp(s z) <= 1 for every s > 0.
        self.z = z - z.max(dim=1, keepdim=True).values
        self.zy = self.z.gather(1, labels.cpu().view(-1, 1)).squeeze(1)

    def flat(self) -> bool:
        """True when every row is constant: the NLL is log K whatever T is."""
        return bool((self.z == 0).all())

    def __call__(self, s: float) -> float:
        return float((torch.logsumexp(self.z * s, dim=1) - self.zy * s).mean())

    def derivatives(self, s: float) -> tuple[float, float]:
        p = torch.softmax(self.z * s, dim=1)
        mean = (p * self.z).sum(dim=1)
        var = (p * self.z.square()).sum(dim=1) - mean.square()
        return float((mean - self.zy).mean()), float(var.clamp_min(0).mean())


def _golden_min(f, a: float, b: float, tol: float) -> float:
    """Minimiser of a unimodal f on [a, b] by golden-section search (no derivatives)."""
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...: the bracket shrinks by this per step
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:  # minimum in [a, d]; ties go left, which keeps the search deterministic
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    return c if fc <= fd else d


def _newton_polish(nll: _NLL, s: float) -> float:
    """A few safeguarded Newton steps on the convex f(s); a step is kept only if it helps."""
    f_s = nll(s)
    for _ in range(_NEWTON_STEPS):
        g, h = nll.derivatives(s)
        if not h > 0:
            break
        s_new = s - g / h
        if not (1.0 / T_MAX <= s_new <= 1.0 / T_MIN):
            break
        f_new = nll(s_new)
        if f_new > f_s:
            break
        done = abs(s_new - s) <= 1e-12 * s
        s, f_s = s_new, f_new
        if done:
            break
    return s


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature T > 0 minimising the mean NLL of softmax(logits / T) (Guo et al. 2017).

    Fit it on a held-out (validation) set, never on the test set you report. The objective
    is NLL(T) = mean_n [logsumexp_k(z_nk / T) - z_n,y_n / T] (nats per image). It is convex
    in s = 1/T, hence unimodal in log T, so a golden-section search over
    log T in [log 0.05, log 20] finds the global minimiser; a few safeguarded Newton steps in
    s then polish it. Everything is float64 and involves no randomness, so the same inputs
    give the same T. If the minimiser lies outside the interval (e.g. a validation set the
    model gets entirely right wants T -> 0) the nearest bound is returned.

    Log-probabilities are valid logits (softmax is shift-invariant per row), so stored
    softmax outputs can be used via ``torch.log(probs.clamp_min(1e-30))``.

    Args:
        logits: [N, K] float logits (or log-probabilities) of the validation images.
        labels: [N] int64 true class indices in [0, K).

    Returns:
        T as a float, in [0.05, 20]; 1.0 when every row is constant (T cannot matter).
    """
    labels = _check_scores(logits, labels, "logits")
    nll = _NLL(logits, labels)
    if nll.flat():
        return 1.0
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    log_t = _golden_min(lambda u: nll(math.exp(-u)), lo, hi, _GOLDEN_TOL)
    # A search that ended in the last bracket at a bound found no minimum inside: the NLL is
    # still falling there, so the answer is the bound itself, exactly (not a value 1e-8 inside
    # it, which a caller asking "at the bound?" would not recognise).
    for bound, t_bound in ((lo, T_MIN), (hi, T_MAX)):
        if abs(log_t - bound) <= 2 * _GOLDEN_TOL:
            return t_bound
    s = _newton_polish(nll, math.exp(-log_t))
    return float(min(max(1.0 / s, T_MIN), T_MAX))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled probabilities softmax(logits / T) (computed in float64).

    Args:
        logits: [N, K] float logits or log-probabilities.
        temperature: T > 0 (T > 1 softens, T < 1 sharpens; the argmax is unchanged).

    Returns:
        [N, K] probabilities in logits' dtype (rows sum to 1).
    """
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if logits.ndim != 2 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a float [N, K] tensor, got {logits.dtype} "
                         f"{list(logits.shape)}")
    return torch.softmax(logits.double() / t, dim=1).to(logits.dtype)


def probs_to_logits(probs: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [N, K] float64, usable as logits (softmax is shift-invariant)."""
    return torch.log(probs.double().clamp_min(_LOG_FLOOR))


# --------------------------------------------------------------------------- summary


def _bins_jsonable(bins: dict) -> dict[str, list]:
    """numpy arrays -> lists, NaN -> None, so strict JSON (allow_nan=False) accepts them."""
    def clean(a: np.ndarray) -> list:
        return [None if isinstance(v, float) and math.isnan(v) else v for v in a.tolist()]

    return {key: clean(np.asarray(val)) for key, val in bins.items()}


def calibration_summary(test_probs: torch.Tensor, test_labels: torch.Tensor,
                        val_logits: torch.Tensor | None = None,
                        val_labels: torch.Tensor | None = None,
                        n_bins: int = 15) -> dict[str, Any]:
    """ECE / MCE of the test predictions, before and after validation-fitted temperature.

    T is fitted on (val_logits, val_labels) only; the test set is then scaled with that T via
    its log-probabilities (see the module docstring), so the test set never influences T.

    Args:
        test_probs: [N, K] float test-set probabilities.
        test_labels: [N] int64 test-set labels.
        val_logits: [M, K] float validation logits (or log-probabilities), or None.
        val_labels: [M] int64 validation labels, or None (give both or neither).
        n_bins: B, equal-width confidence bins.

    Returns:
        JSON-serialisable dict: ``"ece"``, ``"mce"`` (fractions 0..1), ``"n"`` (test images),
        ``"bins"`` (:func:`reliability_bins` as lists, empty bins' NaN as None),
        ``"temperature"`` (fitted T, or None), ``"ece_scaled"``, ``"mce_scaled"`` (test set
        after scaling, or None), ``"bins_scaled"`` (as "bins", or None) and ``"note"`` (one
        line for a report).
    """
    if (val_logits is None) != (val_labels is None):
        raise ValueError("give both val_logits and val_labels, or neither")
    bins = reliability_bins(test_probs, test_labels, n_bins)
    out: dict[str, Any] = {
        "ece": ece_from_bins(bins), "mce": mce_from_bins(bins), "n": int(bins["count"].sum()),
        "bins": _bins_jsonable(bins), "temperature": None, "ece_scaled": None,
        "mce_scaled": None, "bins_scaled": None,
        "note": "no validation split: temperature scaling skipped",
    }
    if val_logits is None:
        return out
    t = fit_temperature(val_logits, val_labels)
    scaled = apply_temperature(probs_to_logits(test_probs), t)
    bins_s = reliability_bins(scaled, test_labels, n_bins)
    out.update(temperature=t, ece_scaled=ece_from_bins(bins_s), mce_scaled=mce_from_bins(bins_s),
               bins_scaled=_bins_jsonable(bins_s))
    at_bound = " (at the search bound)" if t in (T_MIN, T_MAX) else ""
    out["note"] = (f"T = {t:.3f}{at_bound} fitted on {val_logits.shape[0]} validation images; "
                   f"test ECE {100 * out['ece']:.2f}% -> {100 * out['ece_scaled']:.2f}%")
    return out


# --------------------------------------------------------------------------- plots


def _save(fig: Figure, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=100)


def _as_arrays(bins: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(count, confidence, accuracy, edges) as numpy from arrays or JSON lists (None = NaN)."""
    return (np.asarray(bins["count"], dtype=np.int64),
            np.asarray(bins["confidence"], dtype=np.float64),
            np.asarray(bins["accuracy"], dtype=np.float64),
            np.asarray(bins["edges"], dtype=np.float64))


def _reliability_axes(ax, bins: dict, title: str) -> None:
    """Accuracy bars, hatched gap to the mean confidence, the diagonal and per-bin counts."""
    count, conf, acc, edges = _as_arrays(bins)
    left, width = edges[:-1], np.diff(edges)
    full = count > 0
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1, label="perfect calibration", zorder=3)
    ax.bar(left[full], acc[full], width[full], align="edge", color=_RIGHT, alpha=0.85,
           edgecolor="white", lw=0.6, label="accuracy", zorder=1)
    # The gap bar runs from acc_b to conf_b: above the blue bar when over-confident, a hatched
    # band inside it when under-confident (the layout of Guo et al., Fig. 1).
    ax.bar(left[full], conf[full] - acc[full], width[full], bottom=acc[full], align="edge",
           color=_GAP, alpha=0.25, edgecolor=_GAP, hatch="//", lw=0.6,
           label="gap to mean confidence", zorder=2)
    # Counts sit above the taller of the two bars; many bins -> rotate so the text fits.
    many = len(count) > 15
    for b in range(len(count)):
        top = max(acc[b], conf[b]) if full[b] else 0.0
        ax.text(left[b] + width[b] / 2, top + 0.012, f"{count[b]:,}" if full[b] else "0",
                ha="center", va="bottom", fontsize=6.5 if many else 7,
                rotation=90 if many else 0, color="black" if full[b] else "0.6", zorder=4)
    ece_v, mce_v = ece_from_bins(bins), mce_from_bins(bins)
    # An invisible handle carries ECE / MCE into the legend, last, where the eye looks for
    # the numbers.
    score = f"ECE {100 * ece_v:.2f}%   MCE {100 * mce_v:.2f}%"
    ax.plot([], [], " ", label=score)
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index(n) for n in ("perfect calibration", "accuracy",
                                       "gap to mean confidence", score)]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)  # room for the counts above bars reaching 1.0
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("top-label confidence (probability)")
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_title(f"{title}\n{int(count.sum()):,} images, {len(count)} bins; number = images "
                 "per bin", fontsize=10)
    ax.grid(alpha=0.25, zorder=0)
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
              fontsize=8, framealpha=0.9)


def plot_reliability(bins: dict, out: Path, title: str, bins_scaled: dict | None = None) -> None:
    """Reliability diagram (Guo et al. 2017, Fig. 1) written as a PNG.

    One panel: the accuracy of each confidence bin as a bar, the gap to the bin's mean
    confidence hatched, the diagonal of perfect calibration, the number of images above each
    bar and ECE / MCE in the legend. Bars below the diagonal mean over-confidence. With
    ``bins_scaled`` a second panel to the right shows the same test images after temperature
    scaling. Nothing is drawn below the diagram.

    Args:
        bins: a :func:`reliability_bins` dict (numpy arrays) or ``calibration_summary()["bins"]``
            (lists, None for empty bins).
        out: PNG path (parent folders are created).
        title: first line of the panel title (e.g. model and split).
        bins_scaled: optional second dict of the same form, after temperature scaling.
    """
    _save(reliability_figure(bins, title, bins_scaled), out)


def reliability_figure(bins: dict, title: str, bins_scaled: dict | None = None) -> Figure:
    """The figure of :func:`plot_reliability`."""
    panels = [(bins, title)]
    if bins_scaled is not None:
        panels.append((bins_scaled, "after temperature scaling"))
    fig = Figure(figsize=(6.2 * len(panels), 6.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (b, t) in zip(axes, panels):
        _reliability_axes(ax, b, t)
    return fig


def plot_confidence_hist(conf: np.ndarray, correct: np.ndarray, out: Path, title: str,
                         n_bins: int = 20) -> None:
    """Histogram of top-label confidence, right and wrong predictions apart, as a PNG.

    Both use the same equal-width bins on [0, 1] (numpy's: left-closed, the last one closed;
    this is a picture, not the ECE binning). The count axis is logarithmic: on CIFAR-10
    test sets most predictions are right and near confidence 1, and a linear axis would
    flatten the wrong ones (the interesting part) into the floor.

    Args:
        conf: [N] float top-label confidences (probabilities 0..1), e.g. from
            :func:`confidence_and_correct`.
        correct: [N] bool, prediction == label.
        out: PNG path (parent folders are created).
        title: figure title.
        n_bins: number of equal-width histogram bins.
    """
    conf = np.asarray(conf, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != correct.shape:
        raise ValueError(f"conf and correct differ in length: {conf.size} vs {correct.size}")
    edges = bin_edges(n_bins)
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.subplots()
    for mask, name, colour in ((correct, "right", _RIGHT), (~correct, "wrong", _WRONG)):
        vals = conf[mask]
        mean = f", mean {vals.mean():.3f}" if vals.size else ""
        ax.hist(vals, bins=edges, histtype="stepfilled", alpha=0.35, color=colour)
        ax.hist(vals, bins=edges, histtype="step", lw=1.6, color=colour,
                label=f"{name}: {vals.size:,} images{mean}")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)  # a bin holding one image is still visible on the log axis
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-label confidence (probability)")
    ax.set_ylabel(f"images per bin (log scale; bin width {1 / n_bins:.2g})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25, which="major")
    ax.legend(loc="upper left", fontsize=9)
    _save(fig, out)
