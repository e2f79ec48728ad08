"""The fault API: everything a scenario or a test can do to the simulated cluster.

- *Processes:* ``crash`` (the kernel resets the connections) or power off (they go
  silent), ``restart`` (refused, as the daemon refuses, on a rotten counters file),
  ``join`` a node that never ran, ``leave`` gracefully, ``freeze``/``thaw``/``stall``.
- *Network:* ``isolate``, ``partition``, ``block`` one direction, ``heal``; ``clog`` a
  link, ``degrade_links`` (loss, duplication, reordering, jitter), ``stream_faults``,
  ``break_streams``, ``slow_nic``, ``readdress`` (a DHCP renewal).
- *Disks:* ``corrupt`` a piece (bit rot), ``corrupt_manifest``, ``corrupt_file``
  (catalog or counters), ``crash_mid_write`` (a torn write), ``fail_fsync`` (EIO),
  ``fill_disk``/``free_disk``, ``slow_disk``, ``lose_disk`` (for good, maybe as a new node).
- ``heal_all`` ends every transient fault.

Every fault is logged in ``cluster.faults`` and the ledger (``sim.ledger``) hears of the
ones that excuse missing data (rot, disk loss); once a fault has taken effect the ledger
checks every commit's tolerance.

``FaultInjection`` is a mixin of ``sim.cluster.Cluster``, so the faults are methods of
the cluster (``cluster.crash(node)``). The annotations at the top of the class declare
what it uses of the cluster and of the shells (declarations only), so it imports neither.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Callable

from peerstore.core.snapshots import restore_counters
from peerstore.errors import FormatError
from sim.clients import ClientRecord
from sim.content import model_id
from sim.disk import DiskModel, SimDisk
from sim.ledger import Ledger
from sim.loop import EventLoop
from sim.network import Clog, LinkModel, Network
from sim.node import Addr, SimNode


class FaultInjection:
    """The faults one can inject (mixin of ``sim.cluster.Cluster``)."""

    # What the fault API uses of the cluster (set by Cluster.__init__).
    seed: int
    loop: EventLoop
    net: Network
    fault_rng: random.Random
    nodes: dict[str, SimNode]
    ids: list[str]
    addr_owner: dict[Addr, str]
    clients: dict[int, ClientRecord]
    ledger: Ledger
    membership: str
    with_cores: bool
    mdns: bool
    seeds_per_node: int
    faults: list[tuple[float, str]]
    corrupted: set[tuple[str, bytes]]
    retired: set[str]
    highest_incarnation: dict[str, int]
    # ... and of the cluster's other parts: sim.cluster, the shells (sim.shell,
    # sim.gossip_shell).
    _new_addr: Callable[[str], Addr]
    announce: Callable[[], None]
    _boot: Callable[[SimNode, list[Addr]], None]
    _input: Callable[..., None]
    _schedule_core_tick: Callable[[SimNode], None]
    _swim_effects: Callable[[SimNode, list[Any]], None]
    _schedule_swim_tick: Callable[[SimNode], None]
    _announce_mdns: Callable[[SimNode], None]

    # -- the log -------------------------------------------------------------------------

    def _fault(self, description: str) -> None:
        self.faults.append((self.loop.now, description))
        self.loop.trace(f"FAULT {description}")
        if self.with_cores:  # once the fault has taken effect: what status says vs what is durable
            self.loop.after(0.0, self.ledger.check_tolerances)

    # -- processes -----------------------------------------------------------------------

    def crash(self, node_id: str, *, power_off: bool = False, why: str = "") -> None:
        """Kill the process (the host's kernel resets its connections) or, with
        ``power_off``, the whole host (connections go silent). Un-fsynced writes are lost."""
        node = self.nodes[node_id]
        if not node.running:
            return
        self._fault(f"{'power off' if power_off else 'crash'} {node_id[:4]}{' (' + why + ')' if why else ''}")
        if node.swim is not None:
            self.highest_incarnation[node_id] = max(self.highest_incarnation.get(node_id, -1), node.swim.incarnation)
        node.running = False
        node.disk.crash()
        node.reset_process()
        if power_off:
            self.net.power_off(node_id)
        else:
            self.net.process_down(node_id)
        for record in self.clients.values():
            if record.node == node_id and not record.done:
                record.disconnected = True

    def restart(self, node_id: str, *, new_address: bool = False) -> None:
        node = self.nodes[node_id]
        if node.running or node_id in self.retired:
            return
        refusal = self.boot_refusal(node_id) if self.with_cores else None
        if refusal is not None:  # the process exits at once; the host stays up
            self._fault(f"restart {node_id[:4]} refused: {refusal}")
            self.net.process_up(node_id)
            self.net.process_down(node_id)
            return
        self._fault(f"restart {node_id[:4]}{' at a new address' if new_address else ''}")
        if new_address:
            self.addr_owner.pop(node.addr, None)
            node.addr = self._new_addr(node_id)
        self.net.process_up(node_id)
        others = [n for n in self.ids if n != node_id]
        seeds = [self.nodes[i].addr for i in self.fault_rng.sample(others, min(self.seeds_per_node, len(others)))]
        self._boot(node, seeds)
        if self.membership == "static":
            self.loop.after(0.0, self.announce)

    def boot_refusal(self, node_id: str) -> str | None:
        """Why the daemon would refuse to start on this node's disk, or None: a rotten
        counters file is fatal (a rotten catalog is not: the node starts empty)."""
        try:
            restore_counters(self.nodes[node_id].disk.counters)
        except FormatError as err:
            return str(err)
        return None

    def join(self, node_id: str) -> None:
        """Start a node that never ran, seeded with a couple of running nodes."""
        node = self.nodes[node_id]
        if node.running or node.boot:
            raise ValueError(f"node {node_id} has run before: use restart()")
        self._fault(f"join {node_id[:4]}")
        self.net.process_up(node_id)
        running = [i for i in self.ids if self.nodes[i].running]
        picked = self.fault_rng.sample(running, min(self.seeds_per_node, len(running)))
        self._boot(node, [self.nodes[i].addr for i in picked])

    def leave(self, node_id: str) -> None:
        """Graceful shutdown (SIGTERM): announce leaving, gossip a moment, then stop."""
        node = self.nodes[node_id]
        if not node.running or node.swim is None:
            return
        self._fault(f"leave {node_id[:4]}")
        self._swim_effects(node, node.swim.leave(self.loop.now))
        self.loop.after(1.0, self.crash, node_id)

    def freeze(self, node_id: str) -> None:
        """The process stops (SIGSTOP): its sockets accept, nothing is answered."""
        node = self.nodes[node_id]
        if node.running and not node.frozen:
            self._fault(f"freeze {node_id[:4]}")
            node.frozen = True

    def thaw(self, node_id: str) -> None:
        """The process runs again and works through what queued up meanwhile."""
        node = self.nodes[node_id]
        if not node.frozen:
            return
        self._fault(f"thaw {node_id[:4]}")
        node.frozen = False
        backlog, node.backlog = node.backlog, []
        node.backlog_datagrams = 0
        boot = node.boot
        for handler, args in backlog:
            if node.boot != boot or not node.running or node.frozen:
                break
            handler(node, *args)
        if node.boot == boot and node.running and not node.frozen:
            if node.core is not None:
                node.core_tick_at = math.inf
                self._schedule_core_tick(node)
            if node.swim is not None:
                node.swim_tick_at = math.inf
                self._schedule_swim_tick(node)

    def stall(self, node_id: str, seconds: float) -> None:
        """An event-loop stall: the node processes nothing for ``seconds``, then catches up."""
        self.freeze(node_id)
        self.loop.after(seconds, self.thaw, node_id)

    # -- network -------------------------------------------------------------------------

    def readdress(self, node_id: str) -> None:
        """The running node's address changes (a DHCP renewal): connections to the old one
        go silent; the node re-announces itself and peers reconnect when they hear of it."""
        node = self.nodes[node_id]
        if not node.running or node.swim is None:
            return
        self._fault(f"new address for running {node_id[:4]}")
        self.addr_owner.pop(node.addr, None)
        node.addr = self._new_addr(node_id)
        for key, conn in self.net.conns.items():
            if node_id in key:
                conn.zombie = True
        self._input(node, node.boot, lambda n: self._swim_effects(n, n.swim.set_addr(self.loop.now, n.addr)))
        if self.mdns:
            self._announce_mdns(node)

    def isolate(self, node_id: str) -> None:
        self._fault(f"isolate {node_id[:4]}")
        self.net.isolate(node_id)

    def partition(self, *sides: list[str]) -> None:
        self._fault("partition " + " | ".join(",".join(i[:4] for i in side) for side in sides))
        self.net.split(*sides)

    def block(self, src: str, dst: str) -> None:
        self._fault(f"block {src[:4]} -> {dst[:4]}")
        self.net.block(src, dst)

    def heal(self) -> None:
        if self.net.blocked:
            self._fault("heal network")
        self.net.heal()

    def clog(self, src: str, dst: str, delay: float, bandwidth_factor: float = 1.0) -> None:
        self._fault(f"clog {src[:4]} -> {dst[:4]} +{delay * 1000:.0f}ms x{bandwidth_factor}")
        self.net.clog(src, dst, Clog(delay, bandwidth_factor))

    def unclog(self) -> None:
        self.net.unclog()

    def break_streams(self, node_id: str) -> int:
        """Reset every connection of ``node_id`` (both ends notice)."""
        broken = sum(self.net.break_connection(node_id, other) for other in self.ids if other != node_id)
        self._fault(f"break {broken} streams of {node_id[:4]}")
        return broken

    def degrade_links(self, **changes: float) -> None:
        """Change every link's model (``loss=0.1, duplicate=0.02, reorder=0.2, jitter=...``)."""
        self.net.default_link = dataclasses.replace(self.net.default_link, **changes)
        self._fault("links: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(changes.items())))

    def set_loss(self, loss: float) -> None:
        self.degrade_links(loss=loss)

    def stream_faults(self, *, loss: float = 0.0, straggle: float = 0.0, redeliver: float = 0.0) -> None:
        """Data-path (TCP) faults, see ``sim.network``: segment ``loss`` (messages late by
        retransmission timeouts), messages that ``straggle`` in after their connection
        broke, and messages delivered again on a new connection (``redeliver``)."""
        self.net.default_link = dataclasses.replace(self.net.default_link, stream_loss=loss)
        self.net.straggle, self.net.redeliver = straggle, redeliver
        self._fault(f"streams: segment loss {loss:.3g}, straggle {straggle:.2f}, redeliver {redeliver:.2f}")

    def slow_nic(self, node_id: str, bandwidth: float) -> None:
        self.net.hosts[node_id].nic = bandwidth
        self._fault(f"nic {node_id[:4]} {bandwidth * 8 / 1e6:.0f} Mbit/s")

    # -- disks ---------------------------------------------------------------------------

    def corrupt(self, node_id: str, piece_id: bytes) -> None:
        """Flip bits in a stored piece: its bytes no longer hash to its id."""
        self.nodes[node_id].disk.corrupt(piece_id)
        self.corrupted.add((node_id, piece_id))
        self.ledger.rotted(node_id, piece_id)
        self._fault(f"corrupt {node_id[:4]} {piece_id.hex()[:8]}")

    def corrupt_manifest(self, node_id: str, manifest_id: bytes) -> None:
        """Flip bits in a stored manifest file: it no longer hashes to its id."""
        self.nodes[node_id].disk.corrupt_manifest(manifest_id)
        self._fault(f"corrupt manifest {node_id[:4]} {manifest_id.hex()[:8]}")

    def corrupt_file(self, node_id: str, name: str, *, unreadable: bool = True) -> bool:
        """Rot in the node's ``"catalog"`` or ``"counters"`` file, found when it next boots;
        ``unreadable``: cut short, else one bit flipped. False if it has no such file."""
        done = self.nodes[node_id].disk.corrupt_file(name, self.fault_rng, unreadable=unreadable)
        if done:
            self._fault(f"corrupt {name} file {node_id[:4]} ({'cut short' if unreadable else 'one bit flipped'})")
        return done

    def crash_mid_write(self, node_id: str) -> None:
        """Crash the node right after its next piece write, before the fsync."""
        node = self.nodes[node_id]
        if node.running:
            self._fault(f"arm torn write {node_id[:4]}")
            node.crash_when_written = True

    def fail_fsync(self, node_id: str, probability: float = 1.0) -> None:
        """The node's fsyncs fail with EIO (a dying disk): piece, manifest, catalog and
        counter writes fail and leave nothing new on disk."""
        self.nodes[node_id].disk.fail_fsync = probability
        self._fault(f"fsync EIO {node_id[:4]} (p={probability:.2f})")

    def read_only_disk(self, node_id: str) -> None:
        """The node's file system is remounted read-only (a dying SD card): every write
        fails with EROFS; what it holds stays readable."""
        self.nodes[node_id].disk.read_only = True
        self._fault(f"disk read-only {node_id[:4]}")

    def writable_disk(self, node_id: str) -> None:
        self.nodes[node_id].disk.read_only = False
        self._fault(f"disk writable {node_id[:4]}")

    def fill_disk(self, node_id: str, free_bytes: int = 0) -> None:
        disk = self.nodes[node_id].disk
        disk.capacity = disk.used + free_bytes
        self._fault(f"disk full {node_id[:4]} ({free_bytes} bytes free)")

    def free_disk(self, node_id: str) -> None:
        self.nodes[node_id].disk.capacity = None
        self._fault(f"disk freed {node_id[:4]}")

    def slow_disk(self, node_id: str, model: DiskModel) -> None:
        self.nodes[node_id].disk.model = model
        self._fault(f"slow disk {node_id[:4]} ({model.write_bandwidth / 1e6:.0f} MB/s)")

    def lose_disk(self, node_id: str, *, new_id: bool = False, new_address: bool = False) -> str:
        """Permanent disk loss: the host goes down and its store is gone. With the same id
        the node keeps only its identity (node id and boot epoch; pieces, manifests,
        catalog and reserved counters are lost): ``restart()`` it. With ``new_id`` the
        whole data directory is gone, so the machine comes back as a node that never ran
        (same address unless ``new_address``): ``join()`` the returned id; the old id
        never returns. Returns the id to start."""
        node = self.nodes[node_id]
        self.crash(node_id, power_off=True, why="disk lost")
        old = node.disk
        node.disk = SimDisk(model=old.model, boot_epoch=old.boot_epoch)
        self.corrupted.difference_update({c for c in self.corrupted if c[0] == node_id})
        self.ledger.disk_lost(node_id, frozenset(pid for pid in old.durable if old.genuine(pid)))
        if not new_id:
            self._fault(f"disk lost {node_id[:4]}: back empty with the same id")
            return node_id
        self.retired.add(node_id)
        index = len(self.nodes)
        fresh = f"{index + 1:02x}" + model_id("node", self.seed, "replacement", index).hex()[:14]
        addr = self._new_addr(fresh) if new_address else node.addr
        self.addr_owner[addr] = fresh
        self.nodes[fresh] = SimNode(fresh, index, addr, SimDisk(model=old.model), running=False)
        self.net.add_host(fresh, self.net.hosts[node_id].nic)
        self.net.hosts[fresh].listening = False
        self.ids[self.ids.index(node_id)] = fresh
        self._fault(f"disk lost {node_id[:4]}: the machine comes back as new node {fresh[:4]}")
        return fresh

    def add_node(self) -> str:
        """A new machine (empty disk, never ran) joins the cluster: ``join()`` it. Returns its id."""
        model_node = self.nodes[self.ids[0]]
        index = len(self.nodes)
        fresh = f"{index + 1:02x}" + model_id("node", self.seed, "added", index).hex()[:14]
        addr = self._new_addr(fresh)
        self.addr_owner[addr] = fresh
        self.nodes[fresh] = SimNode(fresh, index, addr, SimDisk(model=model_node.disk.model), running=False)
        self.net.add_host(fresh, self.net.hosts[model_node.node_id].nic)
        self.net.hosts[fresh].listening = False
        self.ids.append(fresh)
        self._fault(f"new machine {fresh[:4]}")
        return fresh

    # -- all at once ---------------------------------------------------------------------

    def heal_all(self) -> None:
        """End every transient fault: network, clogs, freezes, full disks."""
        self.heal()
        self.unclog()
        link = self.net.default_link
        self.net.default_link = LinkModel(link.latency, link.jitter)
        for node_id, node in self.nodes.items():
            if node.frozen:
                self.thaw(node_id)
            if node.disk.capacity is not None:
                self.free_disk(node_id)
            node.crash_when_written = False
            node.disk.fail_fsync = 0.0
        self.net.straggle = self.net.redeliver = 0.0
