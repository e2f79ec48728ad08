"""``peerstore local N --set KEY=VALUE``: parsing, applying to every node's config, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peerstore.cli.local_cluster import node_config, plan_cluster
from peerstore.cli.overrides import apply_overrides, parse_override, parse_overrides
from peerstore.errors import ConfigError, UsageError
from peerstore.shell.config import config_from_mapping

KEY = "ab" * 32


def rendered() -> str:
    nodes = plan_cluster(3, root=Path("/tmp/ps-local-set"))
    return node_config(nodes[0], nodes, KEY)


def load(text: str):
    return config_from_mapping(yaml.safe_load(text), "<test>", base_dir=Path("/tmp"))


@pytest.mark.parametrize(
    "arg, key, value",
    [
        ("transfer.request_timeout=15", "transfer.request_timeout", 15),
        ("transfer.request_timeout=2.5", "transfer.request_timeout", 2.5),
        ('watch.paths=["/data/runs"]', "watch.paths", ["/data/runs"]),
        ("watch.paths=[/data/runs, /data/other]", "watch.paths", ["/data/runs", "/data/other"]),
        ("log_level=debug", "log_level", "debug"),
        ("mdns=true", "mdns", True),
        ("advertise_host=", "advertise_host", None),
        ("transfer.memory_budget=32MiB", "transfer.memory_budget", "32MiB"),
        ("watch.name_prefix='a: b'", "watch.name_prefix", "a: b"),
        (" gossip.probe_interval = 2 ", "gossip.probe_interval", 2),
    ],
)
def test_parse_reads_the_value_as_yaml(arg, key, value):
    assert parse_override(arg) == (key, value)


@pytest.mark.parametrize(
    "arg, says",
    [
        ("repair.grace_seconds", "expected KEY=VALUE"),
        ("=15", "expected KEY=VALUE"),
        ("repair grace=15", "not a config key"),
        ("a..b=1", "not a config key"),
        ("watch.paths=[unclosed", "not a YAML value"),
        ("listen.port=9000", "--base-port"),
        ("data_dir=/tmp/x", "--data"),
        ("seeds=[]", "every other node"),
        ("cluster_key=00", "cluster.key"),
    ],
)
def test_parse_refuses_what_cannot_work(arg, says):
    with pytest.raises(UsageError, match="--set") as err:
        parse_override(arg)
    assert says in str(err.value)


def test_a_key_given_twice_or_overlapping_is_refused():
    with pytest.raises(UsageError, match="twice"):
        parse_overrides(["log_level=debug", "log_level=info"])
    with pytest.raises(UsageError, match="overlap"):
        parse_overrides(["transfer={retries: 1}", "transfer.retries=2"])


@pytest.mark.parametrize(
    "args, check",
    [
        (["transfer.request_timeout=15"], lambda c: c.transfer.request_timeout == 15.0),
        (['watch.paths=["/data/runs"]'], lambda c: c.watch.paths == (Path("/data/runs"),)),
        (["log_level=debug", "policy.parity=1", "policy.min_tolerance=0"],
         lambda c: c.log_level == "debug" and c.policy.parity == 1 and c.policy.min_tolerance == 0),
        (["gossip.probe_interval=0.5", "gossip.probe_timeout=0.25"],
         lambda c: c.gossip.probe_interval == 0.5 and c.gossip.probe_timeout == 0.25),
        (["transfer.memory_budget=32MiB"], lambda c: c.transfer.memory_budget == 32 * 1024 * 1024),
        (["watch.name_prefix='lab/'"], lambda c: c.watch.name_prefix == "lab/"),
        (["mdns=true"], lambda c: c.mdns is True),
    ],
)
def test_overrides_land_in_the_config_the_node_reads(args, check):
    before = rendered()
    after = apply_overrides(before, parse_overrides(args))
    assert check(load(after))
    # Everything else, comments included, is as rendered: one line changed per key.
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(after.splitlines()) == len(before.splitlines())
    assert len(changed) == len(args)
    assert after.count("#") == before.count("#")


def test_a_section_or_key_the_template_lacks_is_added():
    text = rendered()
    base = yaml.safe_load(text)
    # A key missing from the file (the reader's default applies) is added in its section.
    trimmed = "\n".join(line for line in text.splitlines() if not line.startswith("  retries:")) + "\n"
    out = apply_overrides(trimmed, [("transfer.retries", 7)])
    assert load(out).transfer.retries == 7
    assert yaml.safe_load(out)["transfer"] == {**base["transfer"], "retries": 7}
    # A whole missing section is appended.
    no_watch = text.split("\nwatch:")[0] + "\n"
    out = apply_overrides(no_watch, [("watch.settle_seconds", 1)])
    assert load(out).watch.settle_seconds == 1.0


@pytest.mark.parametrize(
    "args, key, says",
    [
        (["transfer.request_timeout=-1"], "transfer.request_timeout", "seconds"),
        (["policy.parity=99"], "policy.parity", "0 to 16"),
        (["transfer.retrys=3"], "transfer.retrys", "did you mean 'retries'"),
        (["nosuchsection.key=1"], "nosuchsection", "unknown key"),
        (["log_level=loud"], "log_level", "one of"),
        (["mdns.x=1"], "mdns.x", "not a section"),
        (["watch.paths=/data/runs"], "watch.paths", "list of directories"),
    ],
)
def test_a_bad_key_or_value_fails_before_any_node_starts(args, key, says):
    with pytest.raises(ConfigError) as err:
        apply_overrides(rendered(), parse_overrides(args))
    assert err.value.key == key
    assert says in err.value.problem
    assert str(err.value).startswith("--set")


# ----------------------------------------------------------------- through `peerstore local`


def test_every_node_of_the_local_cluster_gets_the_overrides(tmp_path):
    from peerstore.cli import local_cluster as lc
    from peerstore.shell.config import load_config

    overrides = parse_overrides(["gc.interval_seconds=2", "retention.keep_last=3",
                                 'watch.paths=["/data/runs"]', "transfer.memory_budget=32MiB"])
    nodes, client = lc.prepare_cluster(3, base_port=17720, data=tmp_path, metrics_base_port=0, overrides=overrides)
    for node in nodes:
        config = load_config(node.config_path)
        assert config.gc.interval_seconds == 2.0 and config.retention.keep_last == 3
        assert config.watch.paths == (Path("/data/runs"),)
        assert config.transfer.memory_budget == 32 * 1024 * 1024  # beats the local cluster's own 64MiB
        assert config.listen_port == node.port  # per-node settings untouched
        assert "--set gc.interval_seconds" in node.config_path.read_text().splitlines()[1]
    assert load_config(client).gc.interval_seconds == 60.0  # the CLI's file is not a node's


def test_a_bad_override_stops_the_local_cluster_before_anything_is_written(tmp_path, capsys):
    from peerstore.cli.commands import main

    code = main(["local", "2", "--data", str(tmp_path), "--base-port", "17820", "--metrics-base-port", "0",
                 "--set", "gc.interval_seconds=-5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "gc.interval_seconds" in err and "--set" in err
    assert not list(tmp_path.glob("local/node-*/config.yaml"))
    assert main(["local", "2", "--data", str(tmp_path), "--set", "listen.port=1"]) == 2
    assert "--base-port" in capsys.readouterr().err
