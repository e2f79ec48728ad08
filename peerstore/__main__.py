"""``python -m peerstore`` runs the peerstore command line."""

import sys

from peerstore.cli import main

sys.exit(main())
