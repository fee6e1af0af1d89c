"""``python -m legacyflo_daemon`` is the same as the ``legacyflo-daemon`` command."""

import sys

from .cli import main

sys.exit(main())
