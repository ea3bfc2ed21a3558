"""``python -m overspn``: the same as the ``overspn`` command."""

import sys

from overspn.cli.main import main

sys.exit(main())
