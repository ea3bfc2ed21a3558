"""``python -m overspn``: the same as the ``overspn`` command."""

import sys

from .cli import main

sys.exit(main())
