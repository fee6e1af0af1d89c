"""``python -m legacyflo_daemon`` is the same as the ``legacyflo-daemon`` command."""

import sys

from legacyflo_daemon.cli.main import main

sys.exit(main())
