"""``python -m msflow`` (and ``torchrun -m msflow``): the same as the ``msflow`` command."""

import sys

from msflow.cli import main

sys.exit(main())
