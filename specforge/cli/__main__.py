"""``python -m specforge.cli``: the same as the ``specforge`` command."""

import sys

from specforge.cli.parser import main

sys.exit(main())
