"""peerstore: a checkpoint store for clusters of ordinary machines."""

__version__ = "0.1.0"
