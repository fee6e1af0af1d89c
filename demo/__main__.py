"""``python -m demo``: the same as ``make demo``."""

import sys

from demo.run import main

sys.exit(main())
