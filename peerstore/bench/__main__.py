import sys

from peerstore.bench.cli import main

sys.exit(main())
