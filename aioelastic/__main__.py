"""``python -m aioelastic`` runs the ``aioelastic`` command."""

import sys

from .cli import main

sys.exit(main())
