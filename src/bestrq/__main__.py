"""``python -m bestrq`` (and ``torchrun ... -m bestrq pretrain``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
