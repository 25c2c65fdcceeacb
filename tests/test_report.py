"""report.md / report.html of a run: sections, image references, self-containment, escaping,
and a real headless Chromium rendering the HTML (playwright driving /usr/bin/chromium)."""

from __future__ import annotations

import base64
import html.parser
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from classlab import cli
from classlab.report import build_report
from classlab.rundir import write_json

SECTIONS = ["# Run report: tiny", "## Summary", "## Results", "## Epochs", "## Curves",
            "## Per-class accuracy", "## Confusion matrix", "### Most confused pairs",
            "## Calibration", "## Misclassified images", "## Class activation maps (Grad-CAM)",
            "## Can the CAMs be trusted?", "### Faithfulness: deletion and insertion",
            "### Model-randomisation sanity check", "### Coarse maps", "## Is it the data?",
            "### Suspected label errors in the training set",
            "### Suspected label errors in the test set", "### Data map and forgetting",
            "## Weight updates", "## Configuration"]
# the images of the calibration and CAM-check sections
TRUST_IMAGES = ["diagnose/reliability.png", "diagnose/confidence_hist.png",
                "diagnose/faithfulness.png", "diagnose/sanity.png", "diagnose/sanity_maps.png"]
MD_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(tiny_diagnosed: tuple) -> tuple[Path, Path, Path]:
    run_dir, _ = tiny_diagnosed
    md, page = build_report(run_dir)
    return run_dir, md, page


class _Checker(html.parser.HTMLParser):
    """Collects tags and checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[dict] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def test_markdown_sections_and_images(report: tuple) -> None:
    run_dir, md, _ = report
    text = md.read_text()
    pos = [text.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in pos), [s for s, p in zip(SECTIONS, pos) if p < 0]
    assert pos == sorted(pos)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"| Parameters | {summary['params']:,} |" in text and "," in f"{summary['params']:,}"
    assert "never used to pick it" in text
    assert "<details><summary>config.yaml (resolved)</summary>" in text
    assert (run_dir / "config.yaml").read_text().strip() in text
    assert "| epoch | lr | train loss | train acc |" in text
    images = MD_IMAGE.findall(text)
    assert len(images) >= 7
    for rel in images:
        assert not Path(rel).is_absolute() and (run_dir / rel).is_file(), rel
    assert "diagnose/cam_mistakes.png" in images and "diagnose/mistakes.png" in images
    assert set(TRUST_IMAGES) <= set(images)
    assert "not made yet" not in text


def test_trust_sections_say_what_diagnose_json_says(report: tuple) -> None:
    run_dir, md, _ = report
    text = md.read_text()
    diag = json.loads((run_dir / "diagnose" / "diagnose.json").read_text())
    cal = diag["calibration"]
    assert f"| as predicted | {100 * cal['ece']:.2f}% | {100 * cal['mce']:.2f}% | – |" in text
    assert f"(fitted on {cal['val_images']} validation images)" in text
    for r in diag["faithfulness"]["rows"]:
        assert (f"| Grad-CAM | {r['layer']} | {r['cells'][0]}x{r['cells'][1]} | "
                f"{r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} |") in text
    head = "| method | layer | " + " | ".join(f"+{s}" for s in diag["sanity"]["steps"])
    assert head + " | flagged |" in text
    assert "layer4's map is 4x4" in text


def test_report_of_an_older_diagnosis_names_what_is_missing(tiny_diagnosed: tuple,
                                                            tmp_path: Path) -> None:
    """A diagnose.json written before calibration and the CAM checks existed."""
    run_dir = shutil.copytree(tiny_diagnosed[0], tmp_path / "old")
    path = run_dir / "diagnose" / "diagnose.json"
    diag = json.loads(path.read_text())
    for key in ("calibration", "faithfulness", "sanity", "coarse"):
        del diag[key]
    write_json(path, diag)
    for name in TRUST_IMAGES:
        (run_dir / name).unlink()
    md, _ = build_report(run_dir)
    text = md.read_text()
    assert "## Calibration" in text and "## Can the CAMs be trusted?" in text
    assert "The calibration of the test predictions: not made yet" in text
    assert "The faithfulness scores and the sanity check of the CAMs: not made yet" in text
    assert not set(TRUST_IMAGES) & set(MD_IMAGE.findall(text))


def test_html_is_self_contained_and_well_formed(report: tuple) -> None:
    run_dir, md, page = report
    text = page.read_text()
    assert text.lower().startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in text
    for bad in ('src="http', "src='http", 'href="http', "url(", "@import", "<script",
                "<link", "<iframe"):
        assert bad not in text.lower(), bad
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors and not checker.stack
    assert {"html", "head", "body", "style", "table", "details", "summary"} <= checker.tags
    # every image of the markdown is embedded, as a PNG data URI
    assert len(checker.imgs) == len(MD_IMAGE.findall(md.read_text()))
    for img in checker.imgs:
        head, _, data = img["src"].partition(",")
        assert head == "data:image/png;base64" and img.get("alt")
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


BASIC = ("config.yaml", "summary.json", "metrics.csv")


def test_text_is_escaped(tiny_run: Path, tmp_path: Path, copy_run) -> None:
    run_dir = copy_run(tiny_run, tmp_path, BASIC)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["name"] = "<img src=x onerror=alert(1)> & co"
    write_json(run_dir / "summary.json", summary)
    _, page = build_report(run_dir)
    text = page.read_text()
    assert "<img src=x" not in text
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; co" in text


def test_report_without_diagnose(tiny_run: Path, tmp_path: Path, copy_run) -> None:
    run_dir = copy_run(tiny_run, tmp_path, BASIC)
    md, page = build_report(run_dir)
    text = md.read_text()
    assert f"classlab diagnose {run_dir}" in text
    assert "## Epochs" in text and "| 1 |" in text and "## Summary" in text
    assert not MD_IMAGE.findall(text)  # nothing to show, and no dangling reference
    assert "<img" not in page.read_text()


def test_report_from_the_cli(tiny_run: Path, tmp_path: Path, copy_run,
                             capsys: pytest.CaptureFixture) -> None:
    run_dir = copy_run(tiny_run, tmp_path, BASIC)
    assert cli.main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run folder" in err and "Traceback" not in err


# --------------------------------------------------------------------------- a real browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _unavailable(what: str) -> None:
    """Skip on a developer machine without a browser; fail in CI, where it is installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (apt-get install -y chromium; "
                    "pip install playwright)")
    pytest.skip(f"{what} not installed")


def _chromium() -> str:
    exe = (os.environ.get("CLASSLAB_CHROMIUM") or shutil.which("chromium")
           or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None))
    if exe is None:
        _unavailable("chromium")
    return exe


@pytest.mark.browser
def test_html_renders_in_chromium(report: tuple) -> None:
    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package")
    _, md, page_path = report
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images, i => ({
                alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))""")
            assert page.title().startswith("Run report: tiny")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            subheadings = page.eval_on_selector_all("h3",
                                                    "els => els.map(e => e.textContent)")
            # the table under each new section heading, as the browser laid it out
            tables = page.evaluate("""() => Object.fromEntries(
                Array.from(document.querySelectorAll('h2, h3'), h => {
                    let el = h.nextElementSibling;
                    while (el && !/^(TABLE|H2|H3)$/.test(el.tagName)) el = el.nextElementSibling;
                    const t = el && el.tagName === 'TABLE' ? el : null;
                    return [h.textContent, t ? {rows: t.rows.length,
                        cols: t.rows[0].cells.length, width: t.getBoundingClientRect().width}
                        : null];
                }))""")
            trust_images = page.evaluate("""() => Array.from(document.images, i => i.alt)
                .filter(a => /Reliability|confidence|deletion|randomisation/.test(a))""")
            summary = page.locator("details summary").first
            summary.click()
            config_visible = page.locator("details pre").first.is_visible()
        finally:
            browser.close()
    assert not problems, problems
    assert len(images) == len(MD_IMAGE.findall(md.read_text())) >= 7
    for img in images:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    assert "Weight updates" in headings and "Confusion matrix" in headings
    assert "Calibration" in headings and "Can the CAMs be trusted?" in headings
    assert {"Faithfulness: deletion and insertion", "Model-randomisation sanity check",
            "Coarse maps"} <= set(subheadings)
    assert "Is it the data?" in headings and {
        "Suspected label errors in the training set", "Suspected label errors in the test set",
        "Data map and forgetting"} <= set(subheadings)
    # calibration: header + as predicted + after scaling; 4 layers of Grad-CAM in each check
    assert tables["Calibration"]["rows"] == 3
    assert tables["Faithfulness: deletion and insertion"]["rows"] == 1 + 4
    sanity = tables["Model-randomisation sanity check"]
    assert sanity["rows"] == 1 + 4 and sanity["cols"] == 2 + 7 + 1 and sanity["width"] > 0
    assert len(trust_images) == 5, trust_images
    assert config_visible
    # only the page itself was fetched: no network, no other file
    assert [u for u in requests if not u.startswith("data:")] == [page_path.as_uri()]


def test_weight_update_images_of_a_relative_run_folder(tiny_run: Path, tmp_path: Path,
                                                       copy_run, monkeypatch) -> None:
    # Before: the images' paths got the run folder joined twice (runs/x/runs/x/...) when it
    # was given relative, as `classlab report runs/<run>` does: the section had no images.
    run = copy_run(tiny_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    md, html_path = build_report(Path(run.name))
    text = md.read_text()
    assert "![Update/weight ratio per layer and step](diagnose/dyn_update_ratio.png)" in text
    assert "image missing" not in text.split("## Weight updates", 1)[1].split("\n## ", 1)[0]


def _weight_update_images_shown(run: Path) -> None:
    text = (run / "report.md").read_text()
    section = text.split("## Weight updates", 1)[1].split("\n## ", 1)[0]
    assert "](diagnose/dyn_update_ratio.png)" in section and "image missing" not in section
    assert "image missing" not in text


def test_a_relative_run_folder_through_every_entry_point(tmp_path, monkeypatch, capsys):
    # Every command and API call that writes a report takes the run folder as the user
    # typed it (relative): the report's images are found whatever the working folder was.
    import yaml
    from conftest import _tiny_config

    import classlab
    from classlab import config

    monkeypatch.chdir(tmp_path)
    raw = config.to_dict(_tiny_config())
    raw["diagnose"].update(enabled=True, layers=["layer4"], count=2, sanity_images=1)
    Path("tiny.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["train", "tiny.yaml", "--out", "runs"]) == 0  # train: diagnose + report
    (run,) = [p.relative_to(tmp_path) for p in (tmp_path / "runs").iterdir()]
    _weight_update_images_shown(run)
    for argv in (["diagnose", str(run)], ["report", str(run)]):
        (run / "report.md").unlink()
        assert cli.main(argv) == 0, argv
        _weight_update_images_shown(run)
    (run / "report.md").unlink()
    classlab.load_run(str(run)).report()
    _weight_update_images_shown(run)
    again = classlab.train("tiny.yaml", out="api-runs")
    assert not again.dir.is_absolute()
    _weight_update_images_shown(again.dir)
    again.diagnose(count=2)
    (again.dir / "report.md").unlink()
    again.report()
    _weight_update_images_shown(again.dir)
