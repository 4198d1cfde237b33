"""Pre-training speed against the peers: the same as ``bestrq bench`` (see ``bestrq.benchmark``).

    python bench/pretrain_speed.py --sizes tiny --rounds 3
"""

import sys

from bestrq.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
