"""The report's "Is it the data?" section: suspected label errors of the training and test
sets, the detector scored against injected label noise, the data map and forgetting events,
and the training images left out; all from diagnose.json's ``data_issues`` and the figures
diagnose drew."""

from __future__ import annotations

import shlex

from classlab.fmt import MISSING, fixed, missing, pct
from classlab.report.blocks import Block, H, Img, P, Table
from classlab.rundir import RunFiles

# Above this share of a split flagged, the flags say more about the model than the labels:
# curated sets hold a few percent of wrong labels (CIFAR-10's test set ~0.5%, Northcutt et
# al. 2021), so a model that doubts a quarter of its data has not learned enough for these
# criteria to mean "wrong label".
IMPLAUSIBLE_SHARE = 0.25
CAVEAT = ("That is far more than a dataset's wrong labels could be: the model has not learned "
          "enough yet for this criterion to single out wrong labels (it flags what the model "
          "does not know). Train longer before reading these lists.")


def _share(k: int, n: int) -> str:
    return pct(100 * k / n) if n else MISSING


def _implausible(t: dict | None) -> bool:
    return bool(t) and t.get("images", 0) > 0 and \
        t.get("flagged", 0) / t["images"] > IMPLAUSIBLE_SHARE


def mistakes_sentence(diag: dict | None) -> P | None:
    """How many of the most confident mistakes shown are suspected label errors."""
    data = (diag or {}).get("data_issues") or {}
    if not isinstance(data.get("shown"), int) or not data.get("test"):
        return None
    k, n = data.get("shown_suspected", 0), data["shown"]
    return P(f"**{k} of the {n}** mistakes shown {'is' if k == 1 else 'are'} suspected label "
             "errors (confident learning on the test predictions, see \"Is it the data?\"): "
             "framed in red and marked [label suspected]; there the model may be right and the "
             "label wrong." + (f" {CAVEAT}" if _implausible(data.get("test")) else ""))


def data_blocks(f: RunFiles, diag: dict | None) -> list[Block]:
    out: list[Block] = [H(2, "Is it the data?")]
    data = (diag or {}).get("data_issues")
    if not isinstance(data, dict):
        cmd = f"`classlab diagnose {shlex.quote(str(f.root))}`"
        return out + [P(f"Suspected label errors and the data map are not made yet; run {cmd} "
                        "to make them.")]
    out.append(P("A mistake is not always the model's: some labels are wrong, some images "
                 "are ambiguous. Below, the images whose label the training itself or the "
                 "test predictions doubt, by a stated criterion. Every list is in "
                 "`label_issues.csv` (split, index, given and suggested label, score: higher "
                 f"is more doubtful); `classlab data-issues {shlex.quote(str(f.root))}` prints "
                 "it, and its `--out FILE` is what `data.exclude` reads."))
    if data.get("excluded"):
        out.append(P(f"**{data['excluded']:,} training images were left out of training** "
                     "(`data.exclude`; their training-split indices are in `excluded.csv`)."))
    out += _train_blocks(f, data) + _noise_blocks(data.get("noise")) + _test_blocks(f, data)
    out += _map_blocks(f, data)
    return out


def _train_blocks(f: RunFiles, data: dict) -> list[Block]:
    out: list[Block] = [H(3, "Suspected label errors in the training set")]
    t = data.get("train")
    if not t:
        return out + [P("No per-image training dynamics in this run (`log.data_dynamics` was "
                        "off, or no epoch finished): no training-set check.")]
    out.append(P(f"**{t['flagged']:,} of {t['images']:,} training images "
                 f"({_share(t['flagged'], t['images'])})** are suspected label errors. "
                 f"Criterion: {t['criterion']}. The margins come from the training step's own "
                 f"forward pass over {t['epochs']} epochs, so they are those of the "
                 "*augmented* image each epoch trained on, in training mode. Suggested label: "
                 "the class most often ahead of the given one. Index: the training-split index "
                 "(the training images in their original order after the validation split "
                 "and subset)." + (f" {CAVEAT}" if _implausible(t) else "")))
    if f.label_issues_train.is_file():
        out.append(Img("Suspected label errors in the training set, most doubtful first: "
                       "given → suggested (area under the margin)", f.label_issues_train))
    return out


def _noise_blocks(noise: dict | None) -> list[Block]:
    if not noise:
        return []
    return [H(3, "Against the injected label noise"),
            P(f"This run changed **{noise['injected']:,}** training labels on purpose "
              "(`data.label_noise`, listed in `label_noise.csv`): how well does the "
              "training-set check find them? Precision: the share of the flagged images whose "
              "label was changed; recall: the share of the changed labels that were flagged; "
              "AUROC: the probability that a changed image has a lower area under the margin "
              "than an unchanged one (Mann-Whitney U over every training image; 0.5 is "
              "chance)."),
            Table(["changed labels", "flagged", "flagged and changed", "precision", "recall",
                   "AUROC"],
                  [[f"{noise['noisy']:,}", f"{noise['flagged']:,}", f"{noise['hits']:,}",
                    _ratio(noise.get("precision")), _ratio(noise.get("recall")),
                    fixed(noise.get("auroc"), 3)]])]


def _ratio(v) -> str:
    return MISSING if missing(v) else pct(100 * float(v))


def _test_blocks(f: RunFiles, data: dict) -> list[Block]:
    out: list[Block] = [H(3, "Suspected label errors in the test set")]
    t = data.get("test")
    if not t:
        return out + [P("No test predictions: no test-set check.")]
    out.append(P(f"**{t['flagged']:,} of {t['images']:,} test images "
                 f"({_share(t['flagged'], t['images'])})** are suspected label errors. "
                 f"Criterion: {t['criterion']} (Northcutt et al., JAIR 2021). The test "
                 "predictions are out-of-sample: the model never trained on these labels. "
                 f"Estimated share of wrong test labels: {_ratio(t.get('noise_rate'))}."
                 + (f" {CAVEAT}" if _implausible(t) else "")))
    if f.label_issues_test.is_file():
        out.append(Img("Suspected label errors in the test set, most doubtful first: given → "
                       "suggested (p(suggested) − p(given))", f.label_issues_test))
    return out


def _map_blocks(f: RunFiles, data: dict) -> list[Block]:
    t = data.get("train")
    if not t:
        return []
    r = t.get("regions") or {}
    out: list[Block] = [H(3, "Data map and forgetting"), P(
        "Each training image at the mean (confidence) and standard deviation (variability) "
        "over the epochs of the probability the network gave its label, coloured by the "
        "share of epochs it was right (Swayamdipta et al., EMNLP 2020). The third of the "
        f"images with the highest variability are *ambiguous* ({r.get('ambiguous', 0):,}); "
        f"of the rest, those in the top third of confidence are *easy to learn* "
        f"({r.get('easy', 0):,}), those in the bottom third *hard to learn* "
        f"({r.get('hard', 0):,}): hard-to-learn images are where wrong labels gather.")]
    if f.data_map.is_file():
        out.append(Img("Data map of the training set", f.data_map))
    if f.data_map_examples.is_file():
        out.append(Img("The most typical images of each region", f.data_map_examples))
    out.append(P(f"Forgetting events (Toneva et al., ICLR 2019): **{t['forgotten']:,}** "
                 f"training images went from right to wrong between two consecutive epochs "
                 f"at least once ({t['forgetting_events']:,} events in all); "
                 f"**{t['never_learned']:,}** were never right in any epoch. Per image: "
                 "`diagnose/train_dynamics.csv`."))
    return out
