"""``peerstore watch DIR``: the watcher in the foreground, storing through the local node.

The same `Watcher` the daemon runs over ``watch.paths``, with a `ClientStorer` that puts
through a `NodeClient` (the node reads the files itself when it runs on this machine).
Its queue is kept in ``<data_dir>/watch-cli/<hash of DIR>.json``, so a second run does not
store again what the first stored.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import blake3

from peerstore.errors import (
    InvalidNameError,
    NodeUnreachable,
    OutcomeUnknownError,
    PeerstoreError,
    SourceChangedError,
    UsageError,
)
from peerstore.model.names import VersionId
from peerstore.shell.client import NodeClient
from peerstore.shell.client.sources import SourceFile
from peerstore.shell.config import Config
from peerstore.shell.watcher import OnceReport, PutPlan, StoredVersion, StoreResult, Watcher, failure_kind
from peerstore.watch.naming import Naming
from peerstore.watch.pending import Failed, QueueSettings, ReadChanged

log = logging.getLogger("peerstore.watch")


class ClientStorer:
    """Stores the watcher's checkpoints through a node (``connect`` makes a NodeClient)."""

    def __init__(self, connect: Callable[[], NodeClient]):
        self.connect = connect

    async def store(self, plan: PutPlan) -> StoreResult:
        files = [SourceFile(f.path, f.local, f.size, f.mode, f.mtime_ns, f.inode) for f in plan.files]
        started = time.time()
        try:
            async with self.connect() as client:
                result = await client.put_files(plan.name, plan.local_root, plan.is_dir, files)
        except SourceChangedError as err:
            return ReadChanged(str(err))
        except OutcomeUnknownError as err:
            committed = await self._committed_since(plan, started)
            if committed is not None:
                log.info("%s: the put's outcome was unknown, but version %s is in the catalog", plan.name, committed)
                return StoredVersion(committed)
            return Failed("outcome_unknown", str(err))
        except NodeUnreachable as err:
            return Failed("unreachable", str(err))
        except (UsageError, InvalidNameError) as err:
            return Failed("refused", str(err))
        except PeerstoreError as err:
            return Failed(failure_kind(str(err)), str(err))
        except OSError as err:
            return Failed("io_error", f"{err.strerror or err}")
        digests = result.get("blake3")
        if not isinstance(digests, list) or len(digests) != len(plan.files):
            return StoredVersion(str(result["version"]))
        # the node answers in the order the put sent the files: sorted by path
        by_path = dict(zip(sorted(f.path for f in plan.files), digests))
        return StoredVersion(str(result["version"]), tuple(by_path[f.path] for f in plan.files))

    async def _committed_since(self, plan: PutPlan, started: float) -> str | None:
        """A version of the plan's name created since ``started`` with its size and file
        count: the put committed after all, and retrying would store it twice."""
        try:
            async with self.connect() as client:
                entries = await client.ls(plan.name)
        except PeerstoreError:
            return None
        size = sum(f.size for f in plan.files)
        found = []
        for e in entries:
            try:
                if (e.get("name") == plan.name and e.get("size") == size and e.get("files") == len(plan.files)
                        and float(e.get("created", 0)) >= started - 1.0):
                    found.append(VersionId.parse(e["version_id"]))
            except (KeyError, TypeError, ValueError, PeerstoreError):
                continue
        return str(max(found)) if found else None


def state_path(config: Config, directory: Path) -> Path:
    """Where ``peerstore watch DIR`` keeps its queue."""
    key = blake3.blake3(os.fsencode(os.path.abspath(directory))).hexdigest()[:16]
    return config.data_dir / "watch-cli" / f"{key}.json"


def build_watcher(config: Config, directory: Path, connect: Callable[[], NodeClient], *,
                  name_prefix: str | None, name_template: str | None, include: list[str], exclude: list[str],
                  settle: float | None) -> Watcher:
    """The Watcher for ``peerstore watch``: flags override the config's ``watch:`` keys."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory; watch the directory your trainer writes "
                         "checkpoints into (e.g. runs/)")
    w = config.watch
    naming = Naming(
        prefix=w.name_prefix if name_prefix is None else name_prefix,
        template=w.name_template if name_template is None else name_template,
        include=tuple(include) if include else w.include,
        exclude=tuple(exclude) if exclude else w.exclude,
    )
    settings = QueueSettings(settle_seconds=w.settle_seconds if settle is None else settle,
                             retry_seconds=w.pending_retry_seconds)
    return Watcher([directory], ClientStorer(connect), naming=naming, settings=settings,
                   state_path=state_path(config, directory))


def setup_logging(quiet: bool) -> None:
    """One line per stored / dropped / failed checkpoint on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("peerstore.watch")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def format_once_report(report: OnceReport) -> str:
    """What ``--once`` prints at the end."""
    lines = []
    stats = report.stats
    lines.append(f"stored {stats.stored} checkpoint(s), {stats.unchanged} unchanged since last stored"
                 + (f"; last stored {stats.last_stored}" if stats.last_stored else ""))
    for drop in report.dropped:
        lines.append(f"not stored: {os.path.join(drop.root, drop.unit)}: {drop.reason}")
    if report.pending:
        lines.append(f"{len(report.pending)} checkpoint(s) not stored yet:")
        for p in report.pending:
            lines.append(f"  {os.path.join(p.root, p.unit)} (as {p.name}): {p.reason}")
    return "\n".join(lines)


def once_exit_code(report: OnceReport | None) -> int:
    """0 when nothing waits, 1 otherwise."""
    return 0 if report is None or not report.pending else 1

