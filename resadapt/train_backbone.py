"""``python -m resadapt.train_backbone``: train the tiny backbone of the offline world.

A thin entry point: the recipe and its command line live in :mod:`resadapt.world.recipe`.
"""

import sys

from resadapt.world.recipe import main

if __name__ == "__main__":
    sys.exit(main())
