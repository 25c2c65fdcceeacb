"""Grids in a notebook: :class:`Grid` (what ``classlab.grid(...)`` and
``classlab.load_grid(path)`` return: the results as a pandas DataFrame, the findings, a card),
and the live display while a grid runs: one overall bar over every point's epochs and the
points' table filling in. The terminal lines of the points (run folder, model, final, report)
are kept in a collapsed log under the table instead of scrolling past."""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path
from typing import Any

from classlab import config, fmt
from classlab.engine.console import TERMINAL, Console
from classlab.notebook import markup
from classlab.notebook.bars import LiveBar
from classlab.notebook.live import shown
from classlab.rundir import GridFiles, RunDirError
from classlab.rundir.summary import is_finished, read_summary

EXTRA = "pip install 'classlab[notebook]'"
LINK = re.compile(r"\[([^\]]+)\]\([^)\s]+\)")  # a Markdown link


def import_pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError(f"Grid.table is a pandas DataFrame: {EXTRA} (pandas, "
                          "ipywidgets)") from None
    return pandas


class Grid:
    """A grid folder (``classlab grid``'s output, with its results.md): ``table`` (a pandas
    DataFrame of results.csv), ``findings`` (the sentences results.md opens with), ``points``
    (the point folders); a notebook shows the findings and the table."""

    def __init__(self, grid_dir: str | Path) -> None:
        self.dir = Path(grid_dir)
        self.files = GridFiles(self.dir)
        self.spec = config.read_yaml(self.files.grid)  # written by classlab grid

    @property
    def points(self) -> dict[str, Path]:
        """Point name -> its run folder (``classlab.load_run`` opens one)."""
        return {p["name"]: self.files.point(p["name"]).root for p in self.spec["points"]}

    def results(self) -> str:
        """results.md (``classlab table`` rebuilds it)."""
        try:
            return self.files.results_md.read_text()
        except OSError:
            raise RunDirError(f"{self.dir}: no results.md; classlab table {self.dir} makes "
                              "it") from None

    @property
    def findings(self) -> list[str]:
        """The plain-language findings results.md opens with (best point, paired tests)."""
        lines = self.results().splitlines()
        start = next((i + 1 for i, s in enumerate(lines) if s.startswith("# ")), 0)
        out = []
        for line in lines[start:]:
            if line.startswith("|"):
                break
            if line.strip():  # the Markdown's list marks and bold, as plain sentences
                out.append(line.strip().removeprefix("- ").replace("**", ""))
        return out

    @property
    def table(self) -> Any:
        """results.csv as a pandas DataFrame (one row per point and seed)."""
        return import_pandas().read_csv(self.files.results_csv)

    def __repr__(self) -> str:
        done = sum(is_finished(read_summary(self.files.point(name).summary))
                   for name in self.points)
        return f"Grid({str(self.dir)!r}: {len(self.points)} points, {done} finished)"

    def _repr_html_(self) -> str:
        """results.md as a card: its findings, its table (the run folders named, not
        linked), the test accuracy overlay, and the note on the columns folded away."""
        from classlab.report.htmlpage import md_to_html

        # [seed0](bn-seed0/) -> seed0: a notebook's page is not the grid folder
        text = LINK.sub(r"\1", self.results())
        head, _, rest = text.partition("\n|")
        table, _, note = ("|" + rest).partition("\n\n")
        picture = ""
        if self.files.test_acc.is_file():
            picture = markup.img(self.files.test_acc.read_bytes(),
                                 "test accuracy per epoch of every point", width=640)
        folded = (f"<details><summary>about the columns</summary>{md_to_html(note, self.dir)}"
                  "</details>") if note.strip() else ""
        return markup.frame(md_to_html(head, self.dir) + md_to_html(table, self.dir)
                            + picture + folded
                            + markup.notes([f"Grid folder: {self.dir}"]), "classlab-report")


# --------------------------------------------------------------------------- live


class GridDisplay(Console):
    """The console of a grid in a notebook (see the module docstring). ``points``: (name,
    axis values as text, planned epochs, finished already) of each point, in order."""

    COLUMNS = ["point", "values", "status", "epochs", "train acc", "val acc", "test acc",
               "time"]

    def __init__(self, points: list[tuple[str, str, int, bool]]) -> None:
        self.rows = {name: {"values": values, "status": "finished (skipped)" if done
                            else "queued", "epochs": epochs, "done": epochs if done else 0.0,
                            "acc": {}, "seconds": None}
                     for name, values, epochs, done in points}
        self.current: str | None = None
        self.started = 0.0
        self.log = io.StringIO()  # the terminal's lines of the points
        self.table: Any = None
        self.live: LiveBar | None = None
        self.steps = 1  # steps of the epoch the current point trains

    # the points' events ------------------------------------------------------------------

    def bar(self, total: int, desc: str, *, initial: int = 0, mininterval: float = 0.5,
            disable: bool = False) -> Any:
        self._start()
        row = self.rows.get(self.current or "")
        if row is None or disable:  # a tuning trial, or no progress asked for
            return TERMINAL.bar(total, desc, disable=True)
        self.steps = max(total, 1)
        return _PointSteps(self, initial)

    def say(self, line: str) -> None:
        self.log.write(line + "\n")

    def epoch(self, row: dict, line: str) -> None:
        self.log.write(line + "\n")
        point = self.rows.get(self.current or "")
        if point is None:
            return
        point["done"] = float(row["epoch"])
        point["status"] = f"running: epoch {row['epoch']}/{point['epochs']}"
        point["acc"] = {k: row[f"{k}_acc"] for k in ("train", "val", "test")}
        self._progress(0.0)
        self._show()

    def point(self, event: str, name: str, line: str, summary: dict | None = None) -> None:
        self._start()
        self.log.write(line + "\n")
        row = self.rows.get(name)
        if row is None:
            return
        if event == "start":
            self.current, row["status"], row["t0"] = name, "running", time.monotonic()
        elif event == "end":
            self._ended(row, summary or {})
        elif event == "failed":
            row["status"] = "FAILED: " + line.split("FAILED: ", 1)[-1]
        else:
            row["status"] = "running elsewhere"
        self._progress(0.0)
        self._show()

    def _ended(self, row: dict, summary: dict) -> None:
        final = summary.get("final") or {}
        row["acc"] = {k: final.get(f"{k}_acc") for k in ("train", "val", "test")}
        row["seconds"] = summary.get("wall_seconds")
        if is_finished(summary):
            row["status"], row["done"] = "finished", float(row["epochs"])
        else:
            row["status"] = f"FAILED: {summary.get('error') or 'stopped without a result'}"

    # drawing ---------------------------------------------------------------------------------

    def _start(self) -> None:
        if self.live is None:
            total = sum(r["epochs"] for r in self.rows.values())
            initial = sum(r["done"] for r in self.rows.values())
            self._show()
            self.live = LiveBar(total, "grid", initial=initial, mininterval=0.5,
                                unit="epoch")

    def _progress(self, fraction: float) -> None:
        """The overall bar: every point's finished epochs, plus ``fraction`` of the epoch
        the current point trains."""
        if self.live is not None:
            self.live.set_n(sum(r["done"] for r in self.rows.values()) + fraction)
            point = self.current or ""
            self.live.set_postfix_str(point, refresh=False)

    def finish(self, stopped: bool) -> None:
        if self.live is not None:
            self.live.finish("stopped" if stopped else "done")
        self._show()

    def html(self) -> markup.Html:
        rows = [[name, r["values"], r["status"], f"{int(r['done'])}/{r['epochs']}",
                 *(fmt.pct(r["acc"].get(k)) for k in ("train", "val", "test")),
                 fmt.duration(r["seconds"])] for name, r in self.rows.items()]
        log = self.log.getvalue()
        details = (f"<details><summary>log ({log.count(chr(10))} lines)</summary>"
                   f'<pre style="max-height:24em;overflow:auto">{markup.esc(log)}</pre>'
                   "</details>") if log else ""
        return markup.Html(markup.frame(markup.table(self.COLUMNS, rows, "lllrrrrr") + details),
                           fmt.text_table(self.COLUMNS, rows))

    def _show(self) -> None:
        from IPython.display import display

        if self.table is None:
            self.table = display(self.html(), display_id=True)
        else:
            self.table.update(self.html())


class _PointSteps:
    """The bar a grid point's epoch asks for: its steps move the grid's overall bar."""

    def __init__(self, grid: GridDisplay, initial: int) -> None:
        self.grid, self.n = grid, initial

    def update(self, n: int = 1) -> None:
        self.n += n
        self.grid._progress(min(self.n / self.grid.steps, 1.0))

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass  # the point's loss / LR: the overall bar names the point instead

    def write(self, s: str) -> None:
        self.grid.say(s)

    def close(self) -> None:
        pass


def run_grid(main: Any, points: list[tuple[str, str, int, bool]]) -> int:
    """``main()`` (the grid's driver) with the live display when in a notebook."""
    display = GridDisplay(points)
    with shown(display) as live:
        if live is None:
            return main()
        with contextlib.redirect_stdout(display.log):
            return main()
