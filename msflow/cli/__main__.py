"""``python -m msflow.cli``: the same as the ``msflow`` console script."""

import sys

from msflow.cli import main

sys.exit(main())
