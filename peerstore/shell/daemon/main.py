"""``peerstore node``: run one daemon until SIGINT or SIGTERM."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import trio

from peerstore.shell import logs
from peerstore.shell.config import EXAMPLE_CLUSTER_KEY, Config
from peerstore.shell.daemon.admission import raise_open_file_limit
from peerstore.shell.daemon.node import Daemon
from peerstore.errors import ConfigError, PeerstoreError, StoreError
from peerstore.shell.identity import load_or_create_identity

log = logging.getLogger("peerstore.node")


def setup_logging(level: str, config: Config | None = None) -> None:
    """Log at ``level`` as the config's ``log:`` section says (text to stderr without one).
    Raises ConfigError naming ``log.file`` when that file cannot be opened."""
    settings = config.log if config is not None else None
    if settings is None:
        logs.configure(level)
        return
    try:
        logs.configure(level, settings.format, settings.file, max_bytes=settings.max_bytes,
                       backups=settings.backups, node_name=config.node_name or socket.gethostname())
    except OSError as err:
        raise ConfigError(config.source, "log.file", f"cannot write {settings.file}: {err.strerror or err}; "
                          "fix its directory's permissions, or set log.file: null to log to stderr") from None


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Only one node per data directory (two would corrupt each other's state)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Read-only: flock needs no write access, and a descriptor open for writing would keep
    # the file system from being remounted read-only (as an admin, or a test, may do).
    handle = os.fdopen(os.open(data_dir / "LOCK", os.O_RDONLY | os.O_CREAT, 0o644), "rb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(f"{data_dir} is in use by another peerstore node; stop it first") from err
        raise
    try:
        yield
    finally:
        handle.close()


async def serve(config: Config) -> None:
    identity = load_or_create_identity(config.data_dir)
    logs.set_context(node_id=identity.node_id)
    daemon = Daemon(config, identity)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(daemon.run)
            async for signum in signals:
                log.info("received %s: leaving the cluster and shutting down", signal.Signals(signum).name,
                         extra=logs.fields("node_stopping", signal=signal.Signals(signum).name))
                if daemon.membership is not None:
                    with trio.move_on_after(2):
                        await daemon.membership.leave()
                nursery.cancel_scope.cancel()
                break


def run_node(config: Config) -> int:
    """Run a node in the foreground; return the process exit code."""
    setup_logging(config.log_level, config)
    if config.cluster_key == bytes.fromhex(EXAMPLE_CLUSTER_KEY):
        log.warning("cluster_key is the example key from config.example.yaml: anyone can join; "
                    "run 'peerstore init' for a fresh one", extra=logs.fields("example_cluster_key"))
    limits = raise_open_file_limit()  # each peer, CLI and pending handshake holds a descriptor
    if limits is not None and limits[1] != limits[0]:
        log.debug("raised the open-file limit from %d to %d", *limits)
    try:
        with data_dir_lock(config.data_dir):
            trio.run(serve, config)
    except PeerstoreError as err:
        log.error("%s", err, extra=logs.fields("node_failed"))
        return 1
    except OSError as err:
        log.error("cannot start: %s", err, extra=logs.fields("node_failed", errno=err.errno))
        return 1
    log.info("stopped", extra=logs.fields("node_stopped"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from peerstore.shell.config import load_config

    sys.exit(run_node(load_config(Path(os.environ.get("PEERSTORE_CONFIG", "config.yaml")))))
