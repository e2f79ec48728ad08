"""The CLI's side of the client protocol: talk to one node over the authenticated wire.

Modules, one job each: ``sources`` (what a put stores: the file or tree, scanned and
checked), ``writer`` (a get written beside its destination, verified, then renamed into
place), ``direct`` (the same when the node on this machine writes the files through
descriptors we pass it), ``connection`` (connect, authenticate, bound every wait), ``api``
(:class:`NodeClient`: put, get, ls, rm, status). The public names are re-exported here.
"""

from peerstore.shell.client.api import NodeClient, connect, entry_from_dict
from peerstore.shell.client.connection import DEFAULT_TIMEOUT, LAUNCH_HINT, NodeWire, is_loopback, open_wire
from peerstore.shell.client.sources import Source, SourceFile, scan_source
from peerstore.shell.client.writer import TEMP_PREFIX, CheckpointWriter, check_output, output_target
from peerstore.errors import NodeUnreachable, NotFoundError, OutcomeUnknownError, TargetExists, UsageError

__all__ = [
    "DEFAULT_TIMEOUT",
    "LAUNCH_HINT",
    "TEMP_PREFIX",
    "CheckpointWriter",
    "NodeClient",
    "NodeUnreachable",
    "NodeWire",
    "NotFoundError",
    "OutcomeUnknownError",
    "Source",
    "SourceFile",
    "TargetExists",
    "UsageError",
    "check_output",
    "connect",
    "entry_from_dict",
    "is_loopback",
    "open_wire",
    "output_target",
    "scan_source",
]
