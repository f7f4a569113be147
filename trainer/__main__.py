"""`python -m trainer` (from the repository root): the command-line trainer, on the engine the nodes use.
See docs/cli.md, or `python -m trainer --help`."""

import sys

from .cli.main import main

sys.exit(main())
