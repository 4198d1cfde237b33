"""``python -m bestrq.benchmark``: what ``bestrq bench`` runs (and each model's memory process)."""

import sys

from .run import main

sys.exit(main())
