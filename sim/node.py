"""One simulated machine: its process state, disk, and the sans-IO machines it runs.

A node runs a ``NodeCore`` and (with gossip membership) a ``Swim`` machine, glued by
``peerstore.core.membership.MembershipBridge`` exactly as the daemon glues them. Its
process can be running, dead (``running`` false; the host may still be powered) or
frozen: a frozen process (SIGSTOP, or an event loop stalled by a long computation)
takes in nothing; what arrives meanwhile waits in a backlog and is handled, in arrival
order, when it thaws. The UDP receive buffer is bounded, so a long stall drops datagrams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from peerstore.core.membership import MembershipBridge
from peerstore.core.node import NodeCore
from peerstore.gossip import Swim
from sim.content import Content
from sim.disk import SimDisk

Addr = tuple[str, int]
UDP_BACKLOG = 160  # datagrams a socket buffer of ~200 KB holds


@dataclass
class SimNode:
    node_id: str
    index: int
    addr: Addr
    disk: SimDisk = field(default_factory=SimDisk)
    running: bool = True
    boot: int = 0  # process generation in this run: completions of an earlier one are void
    frozen: bool = False
    backlog: list[tuple[Callable[..., None], tuple[Any, ...]]] = field(default_factory=list)
    backlog_datagrams: int = 0
    core: NodeCore | None = None
    swim: Swim | None = None
    glue: MembershipBridge | None = None
    handles: dict[int, Content] = field(default_factory=dict)
    # requests sent and not yet answered: peer -> req -> connection generation
    outstanding: dict[str, dict[int, int]] = field(default_factory=dict)
    # gossip stream requests: request id -> (peer, connection generation)
    gossip_streams: dict[int, tuple[str, int]] = field(default_factory=dict)
    core_tick_at: float = math.inf
    progress_watch: bool = False  # a BytesMoved report is scheduled (sim.shell)
    swim_tick_at: float = math.inf
    crash_when_written: bool = False  # torn-write fault: die right after the next write
    gossip_stream_bytes: int = 0

    @property
    def state(self) -> str:
        if not self.running:
            return "down"
        return "frozen" if self.frozen else "up"

    def reset_process(self) -> None:
        """What a process loses when it dies: everything but the disk."""
        self.frozen = False
        self.backlog.clear()
        self.backlog_datagrams = 0
        self.handles.clear()
        self.outstanding.clear()
        self.gossip_streams.clear()
        self.core_tick_at = self.swim_tick_at = math.inf
        self.progress_watch = False
        self.crash_when_written = False
