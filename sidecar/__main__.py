"""``python -m sidecar`` is the ``mm-sidecar`` command."""

import sys

from sidecar.cli import main

sys.exit(main())
