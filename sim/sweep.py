"""Older entry point: ``python -m sim.sweep --seeds 300`` sweeps every scenario.

Same as ``python -m sim.chaos --seeds 300``; kept so existing commands keep working.
"""

from __future__ import annotations

import sys

from sim.chaos import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] if "--seeds" in sys.argv else ["--seeds", "100", *sys.argv[1:]]))
