"""``python -m deberta_xf``: the ``deberta-xf`` console script."""

import sys

from deberta_xf.cli import main

sys.exit(main())
