"""Every error peerstore raises on purpose derives from PeerstoreError.

The CLI prints ``str(err)`` as its one-line reason, so messages say what went wrong
and, where there is one, what to do about it.
"""

import errno as _errno  # the table of error numbers (no I/O)


class PeerstoreError(Exception):
    """Root of all deliberate peerstore errors."""


class ConfigError(PeerstoreError):
    """A config file is unreadable or has a bad, missing or unknown key."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


class InvalidNameError(PeerstoreError):
    """A checkpoint name or a path inside a manifest is not acceptable."""


class FormatError(PeerstoreError):
    """Stored or received data is malformed, or in a format version we cannot read."""


class CodecError(FormatError):
    """A wire frame or datagram is malformed, oversized, forged or replayed."""


class AuthError(CodecError):
    """A peer failed the cluster-key challenge, or a MAC did not verify."""


class StoreError(PeerstoreError):
    """The local piece store could not complete an operation."""


class DiskFullError(StoreError):
    """No space left for a piece; nothing partial was left behind."""


class DiskIOError(StoreError):
    """The local disk failed an operation with an OS error other than "full" (EIO, EROFS,
    EFBIG, EMFILE...): that operation failed, nothing partial was left behind, and the
    node goes on. ``path`` and ``errno`` say where and what; ``read_only`` is EROFS."""

    def __init__(self, message: str, *, path: str = "", errno: int | None = None):
        super().__init__(message)
        self.path, self.errno = path, errno

    @property
    def read_only(self) -> bool:
        return self.errno == _errno.EROFS


class CorruptPieceError(StoreError):
    """A piece's bytes do not match its BLAKE3 id."""


class PieceNotFoundError(StoreError):
    """This node does not hold the requested piece."""


class PlacementError(PeerstoreError):
    """Not enough live nodes to place data under the durability policy."""


# -- the client's errors; the CLI maps some of them to their own exit codes


class UsageError(PeerstoreError):
    """The command's arguments cannot work (a missing file, an empty directory...)."""


class NotFoundError(PeerstoreError):
    """The checkpoint or version asked for does not exist."""


class OutcomeUnknownError(PeerstoreError):
    """The connection died after a put was sent and before its result arrived."""


class NodeUnreachable(PeerstoreError):
    """No node answered at the address, or it went silent, or the connection dropped."""


class ConnectionLost(NodeUnreachable):
    """The connection to the node dropped (a subcase of NodeUnreachable)."""


class TargetExists(PeerstoreError):
    """The output path of a get exists and --force was not given."""


class SourceChangedError(PeerstoreError):
    """A file changed (size, mtime, ctime or inode) while a put was reading it: nothing was
    committed. The message contains ``CHANGED_DURING_PUT``."""


CHANGED_DURING_PUT = "changed during put"
