"""classlab in a notebook (issue 27): the run's card, report sections and figures; grids and
comparisons as objects; nothing of IPython outside a notebook; and notebooks executed in a
real Jupyter kernel (nbclient + ipykernel, a kernelspec for this interpreter in a temporary
folder): the README's API example and examples/spec_study.ipynb on synthetic data, the latter
then converted to HTML (nbconvert) and opened in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from matplotlib.figure import Figure

import classlab
from classlab.rundir import RunDirError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "spec_study.ipynb"
TINY = {"name": "nb", "data": {"name": "synthetic", "synthetic_size": 300},
        "model": {"width": 4},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "threads": 1,
                  "precision": "fp32", "channels_last": False},
        "log": {"dynamics_every": 0}, "diagnose": {"enabled": False}}
WIDGET = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- without a kernel


def test_importing_and_training_never_import_ipython(tmp_path: Path) -> None:
    # A fresh interpreter: the test process may have imported IPython (nbclient, pandas)
    code = textwrap.dedent(f"""
        import sys
        import classlab
        run = classlab.train({TINY!r}, out={str(tmp_path / 'runs')!r})
        card = run._repr_html_()
        part = run.html("epochs")
        fig = run.plot_curves()
        run.show()
        g = classlab.grid({{"name": "g", "base": {TINY!r}, "axes": {{"model.norm": ["bn"]}}}},
                          out={str(tmp_path / 'runs')!r})
        g._repr_html_()
        assert "Run folder" in card and "<h2>Epochs</h2>" in part, "no card"
        print("IPython" in sys.modules, sorted(m for m in sys.modules if "ipykernel" in m))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False []"
    # the terminal output as it always was: the epoch line on stdout, the bar on stderr
    assert "Epoch 1: train loss" in out.stdout and "[1/1] start bn" in out.stdout
    assert "Epoch 1: 100%" in out.stderr


def test_run_card_sections_and_figures(tiny_diagnosed: tuple, tmp_path: Path, copy_run,
                                       capsys: pytest.CaptureFixture) -> None:
    run = classlab.load_run(copy_run(tiny_diagnosed[0], tmp_path))
    card = run._repr_html_()
    test_acc = run.summary["final"]["test_acc"]
    assert "finished" in card and f"{test_acc:.2f}%" in card
    assert f"Run folder: <code>{run.dir}</code>" in card
    assert card.count('<img src="data:image/png;base64,') == 1  # the small curves
    mistakes = run.html("mistakes")
    assert "<h2>Misclassified images</h2>" in mistakes and "<h2>Calibration</h2>" not in mistakes
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', mistakes)
    cams = run.html("cams")
    assert "<h2>Class activation maps (Grad-CAM)</h2>" in cams
    assert "<h2>Can the CAMs be trusted?</h2>" in cams
    for name, heading in (("calibration", "Calibration"), ("weights", "Weight updates"),
                          ("data", "Is it the data?"), ("curves", "Curves")):
        assert f"<h2>{heading}</h2>" in run.html(name), name
    whole = run.html()
    assert whole.count("<h2>") > 10 and "<h2>Weight updates</h2>" in whole
    with pytest.raises(ValueError, match=r"^section: unknown value 'nope'; allowed: summary, "):
        run.html("nope")
    figures = {name: getattr(run, f"plot_{name}")()
               for name in ("curves", "confusion", "per_class", "calibration", "mistakes",
                            "cams")}
    assert all(isinstance(f, Figure) for f in figures.values())
    assert len(figures["curves"].axes) == 3
    confusion = figures["confusion"].axes[0].images[0].get_array()
    assert int(confusion.sum()) == run.summary["test_images"]  # every test image, once
    run.show("mistakes")  # outside a notebook: where the report is, or what writes it
    assert capsys.readouterr().out == f"{run.dir}: no report.html yet; run.report() writes it\n"
    run.report()
    run.show("mistakes")
    assert capsys.readouterr().out.startswith(f"{run.dir / 'report.html'} (open it")


def test_figures_of_an_undiagnosed_run_say_what_makes_them(tiny_run: Path) -> None:
    run = classlab.load_run(tiny_run)
    assert isinstance(run.plot_curves(), Figure)
    with pytest.raises(RunDirError, match=r"no confusion\.csv yet; run\.diagnose\(\) makes it"):
        run.plot_confusion()


def test_grid_and_compare_as_objects(tmp_path: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"name": "g", "base": TINY, "axes": {"model.norm": ["bn", "ln"]}}
    g = classlab.grid(spec, out=tmp_path / "runs", train__epochs=1,
                      overrides={"data.val_split": 0.2})
    out = capsys.readouterr().out
    assert "[1/2] start bn" in out and "2 ran, 0 skipped" in out  # as on the terminal
    table = g.table
    assert list(table["Point"]) == ["bn", "ln"]
    for _, row in table.iterrows():
        summary = json.loads((g.points[row["Point"]] / "summary.json").read_text())
        assert row["Test acc"] == pytest.approx(summary["final"]["test_acc"], abs=0.005)
    assert g.findings[0].startswith("Best point by mean validation accuracy: ")
    card = g._repr_html_()
    assert "Best point by mean validation accuracy" in card and "](" not in card
    again = classlab.load_grid(g.dir)
    assert again.findings == g.findings and repr(again) == f"Grid({str(g.dir)!r}: 2 points, " \
        "2 finished)"
    # the same call again is the same grid: its points are finished and skipped
    classlab.grid(spec, out=tmp_path / "runs", train__epochs=1,
                  overrides={"data.val_split": 0.2})
    assert "0 ran, 2 skipped" in capsys.readouterr().out
    c = classlab.compare(classlab.load_run(g.points["bn"]), g.points["ln"])
    assert c.html.is_file() and c.dir.parent == g.dir
    assert "<h1>Compare: bn vs ln</h1>" in c._repr_html_()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"^Grid\.table is a pandas DataFrame: pip install "
                                          r"'classlab\[notebook\]'"):
        _ = g.table


def test_grid_and_compare_are_still_their_packages() -> None:
    from classlab import compare, grid

    assert callable(grid) and callable(compare) and classlab.grid is grid
    assert grid.main_grid.__module__ == "classlab.grid.local"
    assert compare.report.compare_runs.__module__ == "classlab.compare.report"


# --------------------------------------------------------------------------- in a kernel


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory):
    """The name of a kernelspec that starts this interpreter's ipykernel, installed in a
    temporary folder that Jupyter is pointed at for this module."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    share = tmp_path_factory.mktemp("jupyter") / "share" / "jupyter"
    spec = share / "kernels" / "classlab-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "classlab test", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(share))
        mp.setenv("CLASSLAB_NOTEBOOK_DATA", "synthetic")  # the shipped notebook's switch
        mp.setenv("OMP_NUM_THREADS", "1")
        yield "classlab-test"


def execute(nb, kernel_name: str, cwd: Path):
    """Run every cell of ``nb`` in a fresh kernel started in ``cwd``; the kernel is shut
    down afterwards, also when a cell or the test fails (checked by its process id)."""
    from nbclient import NotebookClient

    pids: list[int] = []
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=300, allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}},
                            on_notebook_start=lambda **_: pids.append(
                                client.km.provisioner.process.pid))
    try:
        client.execute()
    finally:
        for pid in pids:
            if _alive(pid):  # nbclient shuts its kernel down; never leave one behind
                os.kill(pid, 9)
                pytest.fail(f"the kernel (pid {pid}) was still running after the notebook")
    assert pids, "no kernel was started"
    return nb


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def outputs(cell) -> list:
    return list(cell.get("outputs", []))


def html_of(cell) -> list[str]:
    return [o["data"]["text/html"] for o in outputs(cell)
            if o["output_type"] in ("display_data", "execute_result")
            and "text/html" in o.get("data", {})]


def check_clean(nb) -> None:
    """No error, no progress written as text on stderr, no widget left (the bars end as
    static HTML), and no terminal epoch line (the table has them)."""
    for i, cell in enumerate(nb.cells):
        for o in outputs(cell):
            assert o["output_type"] != "error", (i, o.get("ename"), o.get("evalue"))
            if o["output_type"] == "stream":
                assert "\r" not in o["text"] and "it/s]" not in o["text"], (i, o["text"])
                assert not (o["name"] == "stderr" and "%|" in o["text"]), (i, o["text"])
                assert not re.search(r"^Epoch \d+: train loss", o["text"], re.M), o["text"]
            assert WIDGET not in o.get("data", {}), i


def finished_bars(cell) -> list[re.Match]:
    return [m for h in html_of(cell)
            for m in re.finditer(r'<progress value="([\d.]+)" max="([\d.]+)"', h)]


def readme_cells() -> list[str]:
    """The README's '## Notebook API' code: its first block as one cell, the second (the
    notebook part) one cell per paragraph."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Notebook API[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    blocks = re.findall(r"^```python[ \t]*\n(.*?)^```", section.group(1), re.M | re.S)
    assert len(blocks) >= 2, "the Notebook API section needs its notebook example"
    return [blocks[0]] + [p for p in blocks[1].split("\n\n") if p.strip()]


def test_readme_example_in_a_kernel(kernel: str, tmp_path: Path) -> None:
    import nbformat

    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    cells = readme_cells()
    nb = execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]),
                 kernel, tmp_path)
    check_clean(nb)
    first = nb.cells[0]
    # the epoch table: one HTML display, updated in place, with the pace line under it
    tables = [h for h in html_of(first) if "<th" in h and ">train loss</th>" in h]
    assert len(tables) == 1 and ">val acc</th>" in tables[0] and "Pace: " in tables[0]
    assert re.search(r"<td[^>]*>1</td>", tables[0])  # epoch 1's row
    [bar] = finished_bars(first)  # one bar, drawn finished
    assert bar.group(1) == bar.group(2)
    assert nb.metadata.get("widgets"), "with ipywidgets installed the bar was a widget"
    text = "".join(o.get("text", "") for o in outputs(first) if o["output_type"] == "stream")
    assert text.count("Run folder: ") == 1 and "Final: " in text  # each line once
    by_source = {c.source.split("#")[0].strip(): c for c in nb.cells[1:]}
    card = html_of(by_source["run"])
    assert len(card) == 1 and "finished" in card[0] and "Run folder:" in card[0]
    [mistakes] = html_of(by_source['run.show("mistakes")'])
    assert "<h2>Misclassified images</h2>" in mistakes and "data:image/png;base64," in mistakes
    figure = outputs(by_source["run.plot_confusion()"])
    assert any("image/png" in o.get("data", {}) for o in figure)


def test_without_ipywidgets_the_bar_is_html(kernel: str, tmp_path: Path) -> None:
    import nbformat

    cells = ["import sys\nsys.modules['ipywidgets'] = None  # as if it were not installed",
             f"import classlab\nrun = classlab.train({TINY!r}, out='runs', train__epochs=2)"]
    nb = execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]),
                 kernel, tmp_path)
    check_clean(nb)
    assert "widgets" not in nb.metadata  # no widget was made
    [bar] = finished_bars(nb.cells[1])
    assert bar.group(1) == bar.group(2)
    [table] = [h for h in html_of(nb.cells[1]) if ">train loss</th>" in h]
    assert len(re.findall(r"<tr><td", table)) == 2


@pytest.fixture(scope="module")
def spec_study(kernel: str, tmp_path_factory: pytest.TempPathFactory):
    """examples/spec_study.ipynb executed on synthetic data (in a folder of its own)."""
    import nbformat

    work = tmp_path_factory.mktemp("spec_study")
    return execute(nbformat.read(NOTEBOOK, as_version=4), kernel, work), work


def cell_of(nb, source_start: str):
    return next(c for c in nb.cells if c.cell_type == "code"
                and c.source.startswith(source_start))


def test_shipped_notebook_in_a_kernel(spec_study: tuple) -> None:
    nb, work = spec_study
    check_clean(nb)
    train = cell_of(nb, "run = classlab.train(")
    [table] = [h for h in html_of(train) if ">train loss</th>" in h]
    assert len(re.findall(r"<tr><td", table)) == 2  # two epochs
    assert [m.group(1) == m.group(2) for m in finished_bars(train)] == [True]
    [card] = html_of(next(c for c in nb.cells if c.source.strip() == "run"))
    assert "finished" in card and "Run folder:" in card
    [mistakes] = html_of(cell_of(nb, 'run.show("mistakes")'))
    assert "<h2>Misclassified images</h2>" in mistakes and "<img" in mistakes
    [cams] = html_of(cell_of(nb, 'run.show("cams")'))
    assert "Class activation maps" in cams and cams.count("<img") >= 2
    grid = cell_of(nb, "norms = classlab.grid(")
    live, card = html_of(grid)[0], html_of(grid)[-1]
    for point in ("bn-seed0", "bn-seed1", "ln-seed0", "ln-seed1"):
        assert re.search(rf"<td[^>]*>{point}</td><td[^>]*>model\.norm=\w+</td><td[^>]*>"
                         r"finished</td>", live), point
    assert [m.group(1) == m.group(2) for m in finished_bars(grid)] == [True]
    assert "Best point by mean validation accuracy" in card
    [frame] = html_of(cell_of(nb, "norms.table.groupby("))
    assert "Batch Normalization" in frame and "Layer Normalization" in frame
    [compare] = html_of(cell_of(nb, "classlab.compare("))
    assert "<h1>Compare: bn-seed0 vs ln-seed0</h1>" in compare
    assert (work / "runs" / "spec_norms" / "results.csv").is_file()


# --------------------------------------------------------------------------- as HTML


@pytest.mark.browser
def test_shipped_notebook_as_html_in_chromium(spec_study: tuple, tmp_path: Path) -> None:
    from test_report import CHROMIUM_ARGS, _chromium, _unavailable

    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package")
    from nbconvert import HTMLExporter

    nb = spec_study[0]
    nb.metadata.pop("widgets", None)  # the bars' closed widgets: nothing left to draw
    page_path = tmp_path / "spec_study.html"
    page_path.write_text(HTMLExporter().from_notebook_node(nb)[0])
    shot = Path(os.environ.get("CLASSLAB_SCREENSHOT_DIR", tmp_path)) / "spec_study.png"
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            # the page's own scripts (require.js, MathJax) come from CDNs: offline here, and
            # nothing classlab shows depends on them
            page.route(re.compile(r"^https?://"), lambda route: route.abort())
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images, i => ({
                complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))""")
            headings = page.eval_on_selector_all("h1, h2", "els => els.map(e => e.textContent)")
            bars = page.eval_on_selector_all(
                "progress", "els => els.map(e => [e.value, e.max, e.offsetWidth])")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert len(images) >= 12 and all(i["complete"] and i["w"] > 0 for i in images), images
    assert {"Misclassified images", "Calibration", "Weight updates", "Is it the data?",
            "Compare: bn-seed0 vs ln-seed0"} <= {h.strip("¶ ") for h in headings}
    assert len(bars) == 2 and all(v == m and w > 100 for v, m, w in bars), bars
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_notebook_parameters_switch_to_synthetic_data() -> None:
    # the shipped notebook trains on CIFAR-10 unless the switch is set (the test sets it)
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells), "ship the notebook without outputs"
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    scope: dict = {}
    exec(compile(params.source.replace("import classlab", ""), "parameters", "exec"), scope)
    assert scope["SYNTHETIC"] == (os.environ.get("CLASSLAB_NOTEBOOK_DATA") == "synthetic")
    study = next(c for c in nb.cells if c.source.startswith("study = {"))
    for synthetic in (False, True):
        scope.update(SYNTHETIC=synthetic)
        exec(compile(study.source, "study", "exec"), scope)
        assert scope["study"]["data"]["name"] == ("synthetic" if synthetic else "cifar10")
    assert yaml.safe_dump(scope["study"])  # plain data, as a YAML recipe
