"""`python -m crossrec.cli` runs the `crossrec` command, as `python -m crossrec` does."""

import sys

from crossrec.cli import main

sys.exit(main())
