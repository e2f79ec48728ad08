"""The peerstore command."""

from peerstore.cli.commands import main

__all__ = ["main"]
