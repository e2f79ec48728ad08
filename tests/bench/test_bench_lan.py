"""``python -m peerstore.bench --link RATE`` (peerstore/bench/lan.py): its parts on their
own, then a short real run on shaped network namespaces (root, iproute2, tc)."""

from __future__ import annotations

import json
import subprocess

import pytest

from peerstore.bench import cli, lan
from peerstore.model.manifest import FileEntry, Manifest, StripeEntry
from peerstore.model.names import VersionId
from peerstore.model.policy import Policy

A, B, C = "a" * 16, "b" * 16, "c" * 16


@pytest.mark.parametrize("text, bits", [("100mbit", 100e6), ("1gbit", 1e9), ("500kbit", None), ("20Mbit", 20e6),
                                        ("2.5gbit", 2.5e9), ("100", None), ("fast", None), ("11gbit", None)])
def test_link_rates_are_read_in_tc_units_and_bounded(text, bits):
    if bits is None:
        with pytest.raises(ValueError, match="rate"):
            lan.parse_rate(text)
    else:
        assert lan.parse_rate(text) == bits


def test_the_token_bucket_holds_a_full_frame_and_about_5_ms_of_the_rate():
    assert lan.tbf(1e9)[:4] == ["tbf", "rate", "1000000000bit", "burst"]
    assert int(lan.tbf(1e9)[4]) == 625_000
    assert int(lan.tbf(1e6)[4]) == 16 * 1024


def test_the_nic_limits_come_from_the_stored_layout():
    """One stripe, k=4 p=2: data0 on a and b, data1 on b and c, data2 on a and c, data3
    on b and c (4 bytes each, the last 2), parity on a and b (4 bytes each)."""
    stripe = StripeEntry(k=4, p=2, block_size=4, data_ids=tuple(bytes([i]) * 32 for i in range(4)),
                         data_lengths=(4, 4, 4, 2), parity_ids=(b"\x08" * 32, b"\x09" * 32))
    manifest = Manifest(
        name="m", version=VersionId(1, A), policy=Policy(), files=(FileEntry("f", 14, 0o644, b"\0" * 32, (stripe,)),),
        placement=((A, B, B, C, A, C, B, C, A, B),), tolerance=1, created=0.0, is_dir=False)
    send, forwarded, remote = lan.layout_bytes(manifest, A)
    assert send == 4 + (4 + 4) + 4 + (2 + 2) + 4  # every slot not on a: parity1 on b, no parity0
    assert forwarded == 4 + 4 + 4 + 2 + 4  # each data shard once (a forwards or stores), parity1
    assert remote == 4 + 2  # data1 and data3: a holds no copy
    assert lan.layout_bytes(manifest, C) == ((4 + 4) + 4 + 4 + 2 + 4 + 4, 4 + 4 + 4 + 2 + 4 + 4, 4)


def test_link_is_refused_with_a_reason_when_it_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr(cli, "unavailable_reason", lambda: "--link needs root (it creates network namespaces)")
    assert cli.main(["--link", "100mbit", "--size", "8MiB"]) == 2
    assert "needs root" in capsys.readouterr().err
    assert cli.main(["--link", "100mbit", "--sweep-shard-size", "1MiB"]) == 2
    assert "does not combine" in capsys.readouterr().err
    assert cli.main(["--link", "fast"]) == 2


# -- real namespaces ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lan_ready():
    reason = lan.unavailable_reason()
    if reason:
        pytest.skip(reason)


def our_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


@pytest.mark.netns
@pytest.mark.needs_real
def test_the_namespaces_are_removed_when_the_run_fails(lan_ready):
    with pytest.raises(KeyboardInterrupt):
        with lan.shaped_lan(2, 50e6) as made:
            prefix = made.prefix
            assert len(our_namespaces(prefix)) == 3
            raise KeyboardInterrupt  # Ctrl-C in the middle of a run
    assert our_namespaces(prefix) == []


@pytest.mark.netns
@pytest.mark.needs_real
@pytest.mark.timeout(180)
def test_a_short_link_run_reports_put_and_get_against_the_nic_limits(lan_ready, tmp_path, capsys):
    out = tmp_path / "lan.json"
    code = cli.main(["--link", "200mbit", "--nodes", "3", "--size", "24MiB", "--no-drop-caches",
                     "--dir", str(tmp_path / "work"), "--json", str(out), "--clean"])
    assert code == 0, capsys.readouterr().err[-3000:]
    phases = {p["phase"]: p for p in json.loads(out.read_text())["phases"]}
    for name in ("baseline: plain TCP, host 0 -> host 1", "baseline: plain TCP, host 1 -> host 0"):
        assert 0.8 * 200e6 / 8 < phases[name]["mb_s"] * 1e6 <= 1.02 * 200e6 / 8  # the shaping holds
    for name in ("put", "get", "put, no forwarding"):
        extra = phases[name]["extra"]
        # at most a little over the limit (the shaping holds; forwarding may pass the
        # no-forwarding limit, never its own); small runs are far under it
        assert 0 < extra["ratio_to_nic_limit"] < (2.0 if name == "put" else 1.2) and extra["nic_limit_bytes"] > 0
        assert extra["cpu_seconds_per_gb"] > 0 and extra["cpu_seconds_per_gb_net_of_idle"] >= 0
    forwarded, plain = phases["put"]["extra"], phases["put, no forwarding"]["extra"]
    # What node 0 really sent: about one copy of each shard with forwarding, two without.
    assert forwarded["coordinator_sent_bytes"] <= 1.1 * forwarded["forwarding_limit_bytes"]
    assert plain["coordinator_sent_bytes"] >= 0.95 * plain["nic_limit_bytes"]
    assert forwarded["forwarding_limit_bytes"] < forwarded["nic_limit_bytes"]
    assert forwarded["coordinator_sent_bytes"] < plain["coordinator_sent_bytes"]
    assert "against the NIC limits (--link)" in capsys.readouterr().out
    assert our_namespaces(f"{lan.FAMILY}-") == []
