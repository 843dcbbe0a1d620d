"""``python -m scdm.cli``: the ``scdm`` command."""

import sys

from . import main

sys.exit(main())
