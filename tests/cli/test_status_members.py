"""`peerstore status` names nodes, shows incarnations as boot count and sequence, and says
which members it could not ask."""

from __future__ import annotations

from peerstore.cli.commands import format_status

A, B, C = "a" * 16, "b" * 16, "c" * 16


def status(**extra) -> dict:
    return {
        "node_id": A, "checkpoints": [],
        "members": [
            {"id": A, "name": "mac-mini", "self": True, "state": "alive", "address": "10.0.0.1:7420",
             "incarnation": (7 << 32) + 2, "boot": 7, "seq": 2},
            {"id": B, "name": "pi-1", "state": "suspect", "address": "10.0.0.2:7420",
             "incarnation": 3 << 32, "boot": 3, "seq": 0, "last_contact": 4.5},
            {"id": C, "state": "alive", "address": "10.0.0.3:7420", "incarnation": (12 << 32) + 1},  # older node
        ],
        **extra,
    }


def member_row(text: str, node: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(node))


def test_members_show_their_names_and_boot_count_and_sequence():
    text = format_status(status(), "127.0.0.1:7420")
    assert text.splitlines()[0] == f"node {A} (mac-mini) (via 127.0.0.1:7420); 3 member(s) in view"
    header = next(line for line in text.splitlines() if line.startswith("NODE"))
    assert header.split() == ["NODE", "NAME", "ADDRESS", "STATE", "INCARNATION", "LAST", "CONTACT"]
    assert member_row(text, A).split()[:5] == [A, "(this", "node)", "mac-mini", "10.0.0.1:7420"]
    assert "boot 7, seq 2" in member_row(text, A)
    assert "pi-1" in member_row(text, B) and "boot 3, seq 0" in member_row(text, B)
    # A node that does not gossip its name yet: a dash, and the boot read from the number.
    row = member_row(text, C)
    assert row.split()[1] == "-" and "boot 12, seq 1" in row
    assert str((7 << 32) + 2) not in text  # no 33-bit numbers left for a person to decode


def test_members_it_could_not_ask_are_named_with_why():
    text = format_status(status(unanswered=[{"id": B, "why": "timeout"}, {"id": C, "why": "unreachable"}]), "x")
    lines = [line for line in text.splitlines() if line.startswith("NOT ASKED")]
    assert lines[0].startswith(f"NOT ASKED: node {B} (pi-1): no answer within the status time limit")
    assert lines[1].startswith(f"NOT ASKED: node {C}: unreachable")
    assert "pieces are not counted" in lines[0]


def test_everyone_answered_says_nothing_extra():
    assert "NOT ASKED" not in format_status(status(unanswered=[]), "x")
    assert "NOT ASKED" not in format_status(status(), "x")
