"""`python -m piecewise_crf ...` is the `piecewise-crf` command (what torchrun runs: `-m piecewise_crf`)."""

import sys

from piecewise_crf.commands.cli import main

sys.exit(main())
