"""classlab in a notebook: live training (the epoch table and one progress bar, updated in
place), rich displays (a run's card, report sections, a grid's findings, a comparison) and the
objects the notebook API returns for grids and comparisons. The layers above hand their live
output to it through :mod:`classlab.engine.console` while a call runs in a notebook; outside
one nothing changes. Nothing here imports IPython unless the process is a notebook kernel
that has imported it already (:func:`~classlab.notebook.detect.in_notebook`).

- :mod:`~classlab.notebook.detect`: is this a notebook; show HTML there
- :mod:`~classlab.notebook.bars`, :mod:`~classlab.notebook.live`: live training, lr-find's bar
- :mod:`~classlab.notebook.runview`: a run's card, its report sections, its figures
- :mod:`~classlab.notebook.grids`: :class:`~classlab.notebook.grids.Grid` and a grid's live view
- :mod:`~classlab.notebook.comparison`, :mod:`~classlab.notebook.lrfind`: compare, lr-find
- :mod:`~classlab.notebook.markup`: the HTML pieces
"""
