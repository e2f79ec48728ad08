"""A frame's declared payload is admitted against the node's memory budget before its
buffer is allocated: a key holder opening many connections that each declare 80 MiB
makes the node allocate one of them, not all."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import trio

from peerstore.shell.config import Config, TransferSettings
from peerstore.shell.daemon.buffers import Buffers, PayloadBudget
from peerstore.shell.daemon.node import Daemon
from peerstore.shell.identity import load_or_create_identity
from peerstore.shell.wirestream import dial
from peerstore.wire import MAX_PAYLOAD
from peerstore.testing.procs import free_port

KEY = bytes(range(32))
MiB = 1 << 20


def test_admission_waits_for_room_and_one_payload_always_fits():
    async def main() -> None:
        budget = PayloadBudget(10 * MiB, timeout=5.0)
        await budget.admit(40 * MiB)  # bigger than the budget, but nothing else is held
        admitted = trio.Event()

        async def second() -> None:
            await budget.admit(MiB)
            admitted.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.sleep(0.1)
            assert not admitted.is_set() and budget.waited == 1
            budget.release(40 * MiB)
            with trio.fail_after(1):
                await admitted.wait()
        assert budget.used == MiB

    trio.run(main)


def test_admission_gives_up_after_its_timeout():
    async def main() -> None:
        budget = PayloadBudget(MiB, timeout=0.2)
        await budget.admit(MiB)
        with pytest.raises(trio.TooSlowError):
            await budget.admit(1)
        assert budget.used == MiB

    trio.run(main)


def test_a_freed_buffer_gives_its_bytes_back():
    async def main() -> None:
        budget = PayloadBudget(4 * MiB, timeout=1.0)
        buffers = Buffers(budget=budget)
        await budget.admit(2 * MiB)
        handle = buffers.add(bytearray(2 * MiB), charged=2 * MiB)
        assert budget.used == 2 * MiB
        buffers.release(handle)
        assert budget.used == 0

    trio.run(main)


def test_many_connections_declaring_the_largest_payload_cost_one_allocation(tmp_path: Path):
    """Eight authenticated connections each announce an 80 MiB payload and send three
    bytes of it. Before the budget the node allocated (and zeroed) 640 MiB at once."""
    config = Config(source="test", data_dir=tmp_path, cluster_key=KEY, listen_host="127.0.0.1", listen_port=free_port(),
                    metrics_port=0, mdns=False, transfer=TransferSettings(memory_budget=16 * MiB))
    daemon = Daemon(config, load_or_create_identity(tmp_path))
    peak: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run)
            tracemalloc.start()
            try:
                wires = []
                for i in range(8):
                    wire = await dial("127.0.0.1", port, cluster_key=KEY, node_id=f"{i + 1:016x}", timeout=5)
                    prefix = wire.conn.send_message({"t": "store_piece"}, MAX_PAYLOAD, bytes(32))
                    await wire.stream.send_all(prefix + b"abc")
                    wires.append(wire)
                with trio.move_on_after(10):  # until all eight have announced theirs
                    while daemon.payloads.waited < 7:
                        await trio.sleep(0.05)
                await trio.sleep(0.2)
                peak["held"] = daemon.payloads.used
                peak["waited"] = daemon.payloads.waited
                peak["bytes"] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            for wire in wires:
                await wire.aclose()
            with trio.fail_after(5):
                while daemon.payloads.used:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert peak["bytes"] < 2 * MAX_PAYLOAD, f"{peak['bytes'] / MiB:.0f} MiB allocated"
    assert peak["held"] == MAX_PAYLOAD and peak["waited"] == 7  # the first one; seven wait for room
