"""``python -m overspn.cli``: the command line."""

import sys

from overspn.cli.main import main

sys.exit(main())
