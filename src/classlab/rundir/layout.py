"""Every file name of a run folder and of a grid folder, defined once.

Writers and readers alike (training, diagnose, report, grid, the notebook API) reach a file
through :class:`RunFiles` / :class:`GridFiles`, never through a string of their own::

    runs/<name>-<YYYYmmdd-HHMMSS>/
        config.yaml  data.json  metrics.csv  dynamics.csv  summary.json  last.pt
        midepoch.pt  test_outputs.pt  data_dynamics.pt  label_issues.csv  label_noise.csv
        excluded.csv
        predictions.csv  report.md  report.html  train.log  tensorboard/
        diagnose/  curves.png mistakes.png per_class.{csv,png} confusion.{csv,png}
                   confused_pairs.csv cam_mistakes.png cam_pred_vs_true.png
                   dyn_update_ratio.png dyn_grad_norms.png dyn_lr.png diagnose.json
                   reliability.png confidence_hist.png faithfulness.{csv,png}
                   sanity.{csv,png} sanity_maps.png cam_methods.png train_dynamics.csv
                   label_issues_{train,test}.png data_map.png data_map_examples.png
"""

from __future__ import annotations

from pathlib import Path

# metrics.csv: one row per epoch (losses are mean per image, accuracies in %, seconds wall)
METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                 "test_acc", "seconds"]
# dynamics.csv: long format, one value per row (layer is "" for lr / momentum rows)
DYNAMICS_FIELDS = ["step", "epoch", "layer", "metric", "value"]
# predictions.csv: one row per test image
PREDICTION_FIELDS = ["index", "true", "pred", "confidence", "loss", "true_name", "pred_name"]
# label_issues.csv: one row per suspected label error. index: the training-split index
# (split=train) or the test-set index (split=test); score: how strongly the label is doubted
# (train: -AUM in logits; test: p(suggested) - p(given)), higher first
LABEL_ISSUE_FIELDS = ["split", "index", "given", "suggested", "score", "given_name",
                      "suggested_name"]
# label_noise.csv: one row per training-split image whose label data.label_noise changed
LABEL_NOISE_FIELDS = ["index", "true", "given"]
# diagnose/train_dynamics.csv: one row per training image (data_dynamics.pt summarised)
TRAIN_DYNAMICS_FIELDS = ["index", "label", "aum", "confidence", "variability", "correctness",
                         "forgetting", "region", "flagged"]


class RunFiles:
    """The paths of one run folder's files (nothing is created or read here)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        r = self.root
        self.config = r / "config.yaml"  # the resolved config
        self.metrics = r / "metrics.csv"  # METRIC_FIELDS, a row per epoch
        self.dynamics = r / "dynamics.csv"  # DYNAMICS_FIELDS
        self.summary = r / "summary.json"  # status, final and best accuracies, versions
        self.checkpoint = r / "last.pt"  # model, optimizer, scheduler, RNG, epoch, config
        # last.pt's state plus the position inside the next epoch (stopped or periodic);
        # stale, and removed, once that epoch's last.pt is written
        self.midepoch = r / "midepoch.pt"
        self.data_record = r / "data.json"  # where the data was, and its files' MD5s
        self.test_outputs = r / "test_outputs.pt"  # per-image test probs/losses, last epoch
        # per training image and epoch: margin, probability of the label, rival class, right
        # (log.data_dynamics; classlab.rundir.datadyn), rewritten after every epoch
        self.data_dynamics = r / "data_dynamics.pt"
        self.label_issues = r / "label_issues.csv"  # LABEL_ISSUE_FIELDS: suspected errors
        self.label_noise = r / "label_noise.csv"  # LABEL_NOISE_FIELDS: injected noise
        self.excluded = r / "excluded.csv"  # training-split indices left out (data.exclude)
        self.predictions = r / "predictions.csv"  # PREDICTION_FIELDS
        self.report_md = r / "report.md"
        self.report_html = r / "report.html"  # self-contained
        self.model_card = r / "model_card.md"  # Hugging Face front matter + plain sections
        self.train_log = r / "train.log"  # a grid point's output, when run in a child
        self.trial = r / "trial.json"  # a tuning trial: its study and number (grid.tune)
        self.tensorboard = r / "tensorboard"  # event files (log.tensorboard)
        # flock'd by the one process writing the folder; says who (classlab.rundir.lock)
        self.lock = r / ".lock"
        # one JSON line per event in the folder's life: resumed with changed settings,
        # extended to more epochs (classlab.run.resume)
        self.history = r / "history.jsonl"
        d = self.diagnose = r / "diagnose"
        self.diagnose_json = d / "diagnose.json"
        self.curves = d / "curves.png"
        self.mistakes = d / "mistakes.png"
        self.per_class_csv = d / "per_class.csv"
        self.per_class = d / "per_class.png"
        self.confusion_csv = d / "confusion.csv"
        self.confusion = d / "confusion.png"
        self.confused_pairs = d / "confused_pairs.csv"
        self.cam_mistakes = d / "cam_mistakes.png"
        self.cam_pred_vs_true = d / "cam_pred_vs_true.png"
        self.cam_methods = d / "cam_methods.png"  # --method all: every method compared
        self.reliability = d / "reliability.png"  # calibration: reliability diagram
        self.confidence_hist = d / "confidence_hist.png"  # confidence of right / wrong
        self.faithfulness_csv = d / "faithfulness.csv"  # deletion/insertion AUC per map
        self.faithfulness = d / "faithfulness.png"  # the mean deletion/insertion curves
        self.sanity_csv = d / "sanity.csv"  # randomisation check: rank correlation per step
        self.sanity = d / "sanity.png"
        self.sanity_maps = d / "sanity_maps.png"  # one image's maps after each step
        self.dyn_update_ratio = d / "dyn_update_ratio.png"
        self.dyn_grad_norms = d / "dyn_grad_norms.png"
        self.dyn_lr = d / "dyn_lr.png"
        # "Is it the data?" (classlab.diagnose.dataissues)
        self.train_dynamics_csv = d / "train_dynamics.csv"  # TRAIN_DYNAMICS_FIELDS
        self.label_issues_train = d / "label_issues_train.png"
        self.label_issues_test = d / "label_issues_test.png"
        self.data_map = d / "data_map.png"
        self.data_map_examples = d / "data_map_examples.png"

    def rel(self, path: Path) -> str:
        """``path`` relative to the run folder, as the report and diagnose.json link it."""
        return Path(path).relative_to(self.root).as_posix()


class GridFiles:
    """The paths of a grid folder's own files; each point is a run folder inside it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.grid = self.root / "grid.yaml"  # the resolved grid and its points
        self.results_md = self.root / "results.md"
        self.results_csv = self.root / "results.csv"
        self.test_acc = self.root / "test_acc.png"  # every point's test accuracy per epoch
        self.dynamics = self.root / "dynamics.png"  # weight-update overlay of the points
        # a tuned grid (classlab.grid.tune): the Optuna study of every point, one run folder
        # per trial, each point's tuning record; the tuning figure
        self.tune = self.root / "tune"
        self.study = self.tune / "study.journal"  # Optuna's JournalStorage file
        self.tuning_png = self.root / "tuning.png"

    def point(self, name: str) -> RunFiles:
        return RunFiles(self.root / name)

    def trial(self, group: str, number: int) -> RunFiles:
        """The run folder of trial ``number`` of point ``group``'s tuning."""
        return RunFiles(self.tune / group / f"trial-{number:03d}")

    def tuning(self, group: str) -> Path:
        """Point ``group``'s tuning record: its trials, best values, compute (JSON)."""
        return self.tune / group / "tuning.json"
