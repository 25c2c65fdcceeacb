"""Tools around training that keep no run folder: the LR range test
(:mod:`~classlab.tools.lr_find`) and the LR schedule trace (:mod:`~classlab.tools.schedule`)."""
