"""``python -m classlab`` (and ``torchrun -m classlab``) runs the command line."""

import sys

from classlab.cli import main

sys.exit(main())
