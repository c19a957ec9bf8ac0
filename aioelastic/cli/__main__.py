"""``python -m aioelastic.cli`` runs the ``aioelastic`` command."""

import sys

from . import main

sys.exit(main())
