"""``python -m resadapt.synth``: write a synthetic video-QA dataset (.mp4 files + data.jsonl).

A thin entry point: the generator and its command line live in :mod:`resadapt.world.synth`.
"""

import sys

from resadapt.world.synth import main

if __name__ == "__main__":
    sys.exit(main())
