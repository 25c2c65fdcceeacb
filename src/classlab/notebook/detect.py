"""Is this a notebook? Asked without importing IPython: a process that has not imported it
is no notebook, and ``import classlab`` or a training run must never pull it in."""

from __future__ import annotations

import importlib.util
import sys

# The shells that draw rich output: Jupyter's kernel (ipykernel, also VS Code's notebooks)
# and Colab's. IPython in a terminal (TerminalInteractiveShell) keeps the terminal output.
NOTEBOOK_SHELLS = ("ZMQInteractiveShell", "Shell")


def in_notebook() -> bool:
    """True inside a notebook kernel; False in a terminal, a script or a test run."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    if shell is None:
        return False
    kind = type(shell)
    return kind.__name__ == "ZMQInteractiveShell" or (
        kind.__name__ in NOTEBOOK_SHELLS and kind.__module__.startswith("google.colab"))


def has_widgets() -> bool:
    """Whether ipywidgets is installed (the progress bar is then a widget)."""
    return importlib.util.find_spec("ipywidgets") is not None


def show(obj: object) -> None:
    """Display ``obj`` (anything with ``_repr_html_``) in the notebook's output."""
    from IPython.display import display

    display(obj)


def show_html(markup: str) -> None:
    """Display HTML in the notebook's output."""
    from IPython.display import HTML, display

    display(HTML(markup))


def figures_inline() -> None:
    """Show a returned ``matplotlib.figure.Figure`` as a picture. IPython draws figures only
    once pyplot's inline backend is on, and classlab's figures are plain Figure objects (no
    pyplot); a format the user chose (retina, SVG) is left as it is."""
    from matplotlib.figure import Figure

    from classlab.notebook.markup import png_bytes

    shell = sys.modules["IPython"].get_ipython()
    png = shell.display_formatter.formatters["image/png"]
    try:
        png.lookup_by_type(Figure)
    except KeyError:
        png.for_type(Figure, png_bytes)
