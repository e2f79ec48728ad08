import dataclasses
from pathlib import Path

import pytest
import yaml

from peerstore.shell import config as cfg
from peerstore.shell.config import (
    Config,
    GossipSettings,
    TransferSettings,
    WatchSettings,
    config_from_mapping,
    format_size,
    generate_cluster_key,
    load_config,
    parse_host_port,
    parse_size,
    render_config,
    render_example_config,
)
from peerstore.errors import ConfigError
from peerstore.model.policy import Policy
from tests.support.paths import REPO

KEY = "ab" * 32


def minimal(**extra):
    return {"data_dir": "/srv/peerstore", "cluster_key": KEY, **extra}


def write(tmp_path: Path, text: str, name: str = "peerstore.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def with_key(dotted: str, value):
    """minimal() with ``value`` placed at the dotted key, e.g. 'policy.parity'."""
    data = minimal()
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return data


# ---------------------------------------------------------------------------- defaults


def test_minimal_config_takes_every_default():
    c = config_from_mapping(minimal(), "x.yaml")
    assert c == Config(source="x.yaml", data_dir=Path("/srv/peerstore"), cluster_key=bytes.fromhex(KEY))
    assert (c.listen_host, c.listen_port, c.metrics_host, c.metrics_port) == ("0.0.0.0", 7420, "127.0.0.1", 9420)
    assert c.policy == Policy() and c.gossip == GossipSettings()
    assert c.transfer.memory_budget == 128 * 1024 * 1024
    assert c.watch == WatchSettings() and c.seeds == () and c.mdns is True and c.log_level == "info"


def test_cluster_key_is_kept_out_of_repr():
    assert KEY not in repr(config_from_mapping(minimal(), "x.yaml"))


def test_sections_left_empty_mean_defaults():
    data = yaml.safe_load("data_dir: /d\ncluster_key: '%s'\ngossip:\ntransfer:\n" % KEY)
    c = config_from_mapping(data, "x.yaml")
    assert c.gossip == GossipSettings() and c.transfer == TransferSettings()


# ---------------------------------------------------------------------------- good values

GOOD = [
    ("listen.host", "::", "listen_host", "::"),
    ("listen.port", 1, "listen_port", 1),
    ("metrics.port", 0, "metrics_port", 0),
    ("advertise_host", "10.0.0.7", "advertise_host", "10.0.0.7"),
    ("node_name", "pi-3", "node_name", "pi-3"),
    ("seeds", ["pi1:7420", "[::1]:7421", "10.0.0.2:9", "pi1:7420"], "seeds",
     (("pi1", 7420), ("::1", 7421), ("10.0.0.2", 9))),
    ("mdns", False, "mdns", False),
    ("log_level", "DEBUG", "log_level", "debug"),
    ("policy.shard_size", "1MiB", "policy.shard_size", 1024 * 1024),
    ("policy.shard_size", "512 KiB", "policy.shard_size", 512 * 1024),
    ("policy.shard_size", 65536, "policy.shard_size", 65536),
    ("policy.parity", 0, "policy.parity", 0),
    ("gossip.probe_interval", 2, "gossip.probe_interval", 2.0),
    ("transfer.memory_budget", "1GiB", "transfer.memory_budget", 1 << 30),
    ("transfer.retries", 0, "transfer.retries", 0),
    ("watch.settle_seconds", 0, "watch.settle_seconds", 0.0),
    ("watch.name_prefix", "runs/", "watch.name_prefix", "runs/"),
]


@pytest.mark.parametrize("key,value,attr,expected", GOOD, ids=[f"{g[0]}={g[1]!r}" for g in GOOD])
def test_good_values(key, value, attr, expected):
    c = config_from_mapping(with_key(key, value), "x.yaml")
    got = c
    for part in attr.split("."):
        got = getattr(got, part)
    assert got == expected


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path):
    text = f"data_dir: data\ncluster_key: '{KEY}'\nwatch:\n  paths: [runs, /abs/out]\n"
    c = load_config(write(tmp_path, text))
    assert c.data_dir == tmp_path.resolve() / "data"
    assert c.watch.paths == (tmp_path.resolve() / "runs", Path("/abs/out"))


def test_home_directory_is_expanded():
    c = config_from_mapping(minimal(data_dir="~/ps"), "x.yaml", base_dir=Path("/etc"))
    assert c.data_dir == Path("~/ps").expanduser()


# ---------------------------------------------------------------------------- bad values:
# (dotted key, bad value, words the problem must contain)

BAD = [
    ("data_dir", 7, "string"),
    ("data_dir", "", "non-empty"),
    ("data_dir", None, "null"),
    ("cluster_key", "abc", "64 hex"),
    ("cluster_key", "zz" * 32, "64 hex"),
    ("cluster_key", int("1" * 64), "in quotes"),
    ("cluster_key", ["ab"], "64 hex"),
    ("listen", "0.0.0.0:7420", "mapping"),
    ("listen.host", 7, "string"),
    ("listen.host", "a b", "host name"),
    ("listen.host", "[::1]", "no brackets"),
    ("listen.port", 0, "1 to 65535"),
    ("listen.port", 65536, "1 to 65535"),
    ("listen.port", "7420", "integer"),
    ("listen.port", True, "integer"),
    ("listen.port", 7420.0, "integer"),
    ("metrics.port", -1, "0 to 65535"),
    ("metrics.host", None, "null"),
    ("advertise_host", 10, "string"),
    ("node_name", False, "quotes"),
    ("node_name", "x" * 65, "at most 64"),
    ("node_name", "a\nb", "printable"),
    ("seeds", "pi1:7420", "list"),
    ("seeds", ["pi1"], "host:port"),
    ("seeds", ["pi1:"], "host:port"),
    ("seeds", ["pi1:99999"], "1 to 65535"),
    ("seeds", ["pi1:0"], "1 to 65535"),
    ("seeds", ["::1:7420"], "brackets"),
    ("seeds", ["[pi1]:7420"], "IPv6"),
    ("seeds", [7420], "string"),
    ("seeds", ["h:1"] * 300, "at most"),
    ("mdns", "yes", "true or false"),
    ("mdns", 1, "true or false"),
    ("log_level", "verbose", "debug, info, warning, error"),
    ("log_level", 3, "one of"),
    ("policy", [1], "mapping"),
    ("policy.parity", "two", "an integer from 0 to 16, got 'two'"),
    ("policy.parity", 17, "0 to 16"),
    ("policy.parity", True, "integer"),
    ("policy.replicas", 3, "2"),
    ("policy.stripe_width", 0, "1 to 16"),
    ("policy.shard_size", "4 megs", "unknown unit"),
    ("policy.shard_size", "lots", "not a size"),
    ("policy.shard_size", "1.3KiB", "whole number"),
    ("policy.shard_size", 1024, "64KiB to 64MiB"),
    ("policy.shard_size", "1GiB", "64KiB to 64MiB"),
    ("policy.shard_size", 4194304.0, "size"),
    ("policy.shard_size", -5, "size"),
    ("policy.min_tolerance", 4, "parity+1"),
    ("gossip.probe_interval", 0, "seconds"),
    ("gossip.probe_interval", "1s", "number of seconds"),
    ("gossip.probe_interval", float("nan"), "seconds"),
    ("gossip.probe_interval", float("inf"), "seconds"),
    ("gossip.probe_timeout", 5, "probe_interval"),
    ("gossip.indirect_checks", -1, "0 to 16"),
    ("gossip.gossip_nodes", 1.5, "integer"),
    ("gossip.tombstone_lifetime", 1, "seconds"),
    ("transfer.max_inflight_bytes_per_peer", "1MiB", "policy.shard_size"),
    ("transfer.memory_budget", "16MiB", "max_inflight_bytes_per_peer"),
    ("transfer.memory_budget", "1TiB", "64GiB"),
    ("transfer.retries", 101, "0 to 100"),
    ("transfer.backoff_max", 0.1, "backoff_base"),
    ("transfer.request_timeout", -1, "seconds"),
    ("watch.paths", "/runs", "list"),
    ("watch.paths", ["/runs", 3], "item 1"),
    ("watch.paths", ["/r"] * 65, "at most"),
    ("watch.settle_seconds", -1, "seconds"),
    ("watch.name_prefix", None, "string"),
    ("watch.name_prefix", "x" * 101, "at most"),
]


@pytest.mark.parametrize("key,value,words", BAD, ids=[f"{b[0]}={str(b[1])[:20]}" for b in BAD])
def test_bad_value_names_the_file_and_the_key(key, value, words):
    with pytest.raises(ConfigError) as err:
        config_from_mapping(with_key(key, value), "/etc/peerstore.yaml")
    assert err.value.source == "/etc/peerstore.yaml"
    assert err.value.key == key
    assert words in err.value.problem
    assert str(err.value).startswith(f"/etc/peerstore.yaml: {key}: ")


UNKNOWN = [
    ("listen_port", "listen_port", "write it as listen: {port: ...}"),
    ("metrics_host", "metrics_host", "write it as metrics: {host: ...}"),
    ("seed", "seed", "did you mean 'seeds'"),
    ("policy.partiy", "policy.partiy", "did you mean 'parity'"),
    ("gossip.probe_intervall", "gossip.probe_intervall", "did you mean 'probe_interval'"),
    ("transfer.retry", "transfer.retry", "did you mean 'retries'"),
    ("watch.path", "watch.path", "did you mean 'paths'"),
    ("metrics.enabled", "metrics.enabled", "unknown key"),
    ("zzz", "zzz", "known keys: data_dir"),
]


@pytest.mark.parametrize("key,reported,words", UNKNOWN)
def test_unknown_keys_are_rejected_by_name_with_a_suggestion(key, reported, words):
    with pytest.raises(ConfigError) as err:
        config_from_mapping(with_key(key, 1), "c.yaml")
    assert (err.value.source, err.value.key) == ("c.yaml", reported)
    assert words in err.value.problem


def test_non_string_key_is_unknown():
    with pytest.raises(ConfigError) as err:
        config_from_mapping({**minimal(), 5: 1}, "c.yaml")
    assert err.value.key == "5"


@pytest.mark.parametrize("missing,words", [("cluster_key", "peerstore init"), ("data_dir", "directory")])
def test_missing_required_key(missing, words):
    data = minimal()
    del data[missing]
    with pytest.raises(ConfigError) as err:
        config_from_mapping(data, "c.yaml")
    assert err.value.key == missing and words in err.value.problem


@pytest.mark.parametrize("data,words", [(None, "empty"), ([1, 2], "got a list"), ("text", "mapping")])
def test_top_level_must_be_a_mapping(data, words):
    with pytest.raises(ConfigError) as err:
        config_from_mapping(data, "c.yaml")
    assert err.value.key == cfg.TOP_KEY and words in err.value.problem


# ---------------------------------------------------------------------------- files

FILE_PROBLEMS = [
    ("data_dir: [unclosed\n", "line 2"),
    ("data_dir: /d\n  bad: indent\n", "not valid YAML"),
    ("data_dir: /d\ndata_dir: /e\n", "appears twice"),
    ("a: 1\n\tb: 2\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,words", FILE_PROBLEMS)
def test_yaml_problems_name_the_file(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.source, err.value.key) == (str(path), cfg.FILE_KEY)
    assert words in err.value.problem


def test_value_problem_in_a_file_names_that_file(tmp_path):
    path = write(tmp_path, f"data_dir: /d\ncluster_key: '{KEY}'\npolicy:\n  parity: two\n")
    with pytest.raises(ConfigError, match=r"peerstore\.yaml: policy\.parity: expected an integer"):
        load_config(path)


def test_yaml_yes_is_a_boolean_but_quoted_yes_is_not(tmp_path):
    assert load_config(write(tmp_path, f"data_dir: /d\ncluster_key: '{KEY}'\nmdns: no\n")).mdns is False
    with pytest.raises(ConfigError, match="mdns"):
        load_config(write(tmp_path, f"data_dir: /d\ncluster_key: '{KEY}'\nmdns: 'no'\n"))


@pytest.mark.parametrize("case", ["missing", "directory", "binary", "huge"])
def test_unreadable_files(tmp_path, case):
    path = tmp_path / "c.yaml"
    if case == "directory":
        path.mkdir()
    elif case == "binary":
        path.write_bytes(b"data_dir: \xff\xfe\n")
    elif case == "huge":
        path.write_text("#" * (cfg.MAX_CONFIG_BYTES + 10))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.source, err.value.key) == (str(path), cfg.FILE_KEY)
    if case == "missing":
        assert "peerstore init" in err.value.problem


# ---------------------------------------------------------------------------- helpers

@pytest.mark.parametrize("text,expected", [
    ("4096", 4096), ("4MiB", 4 << 20), ("64 MiB", 64 << 20), ("512KiB", 512 << 10),
    ("1GiB", 1 << 30), ("1.5GiB", 3 << 29), ("2mib", 2 << 20), ("3MB", 3_000_000), ("7B", 7),
    ("1TiB", 1 << 40),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "4 M", "-1", "1e6", "4MiBs", "1.1B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("n", [1, 1023, 1024, 4 << 20, 192 << 20, 3 << 29, 1 << 40, 12345678])
def test_format_size_round_trips(n):
    assert parse_size(format_size(n)) == n


def test_parse_host_port():
    assert parse_host_port("[fe80::1]:1") == ("fe80::1", 1)
    assert parse_host_port("pi.local:7420") == ("pi.local", 7420)


def test_generate_cluster_key():
    a, b = generate_cluster_key(), generate_cluster_key()
    assert a != b and len(a) == 64 and bytes.fromhex(a)


def test_schema_covers_every_dataclass_field():
    assert set(cfg._GOSSIP_KEYS) == {f.name for f in dataclasses.fields(GossipSettings)}
    assert set(cfg._TRANSFER_KEYS) == {f.name for f in dataclasses.fields(TransferSettings)}
    assert set(cfg._watch_keys(None)) == {f.name for f in dataclasses.fields(WatchSettings)}
    assert set(cfg._POLICY_KEYS) == {f.name for f in dataclasses.fields(Policy)}


# ---------------------------------------------------------------------------- rendering


def flat_keys(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from flat_keys(value, f"{prefix}{key}.")
        yield f"{prefix}{key}"


def all_known_keys():
    sections = {name: getattr(cfg, f"_{name.upper()}_KEYS") for name in cfg._SECTIONS if name != "watch"}
    sections["watch"] = cfg._watch_keys(None)
    keys = set(cfg.TOP_LEVEL_KEYS)
    for name, checkers in sections.items():
        keys |= {f"{name}.{k}" for k in checkers}
    return keys


def test_example_file_is_current_loads_and_documents_every_key():
    text = (REPO / "config.example.yaml").read_text()
    assert text == render_example_config(), (
        "config.example.yaml is stale; regenerate it with: python -c 'from peerstore.shell.config import "
        "render_example_config as r; open(\"config.example.yaml\", \"w\").write(r())'")
    assert set(flat_keys(yaml.safe_load(text))) == all_known_keys()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and not line.endswith(":"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above: {line}"
    c = load_config(REPO / "config.example.yaml")
    assert c.cluster_key == bytes.fromhex(cfg.EXAMPLE_CLUSTER_KEY)
    defaults = Config(source=c.source, data_dir=c.data_dir, cluster_key=c.cluster_key)
    assert c == defaults


def test_render_config_round_trips_its_overrides(tmp_path):
    text = render_config(data_dir="data", cluster_key=KEY, listen_port=7500, node_name="no",
                         seeds=["pi1:7420", ("::1", 7421)], mdns=False, log_level="debug",
                         advertise_host="10.0.0.9", metrics_port=0)
    c = load_config(write(tmp_path, text))
    assert c.data_dir == tmp_path.resolve() / "data"
    assert c.cluster_key == bytes.fromhex(KEY)
    assert (c.listen_port, c.node_name, c.mdns, c.log_level) == (7500, "no", False, "debug")
    assert c.seeds == (("pi1", 7420), ("::1", 7421))
    assert (c.advertise_host, c.metrics_port) == ("10.0.0.9", 0)
    assert (c.policy, c.gossip, c.transfer, c.watch) == (Policy(), GossipSettings(), TransferSettings(),
                                                          WatchSettings())


def test_render_config_makes_a_fresh_key_each_time():
    keys = {yaml.safe_load(render_config())["cluster_key"] for _ in range(3)}
    assert len(keys) == 3


def test_render_config_rejects_bad_overrides():
    with pytest.raises(TypeError, match="policy"):
        render_config(policy=1)
    with pytest.raises(ConfigError, match="listen.port"):
        render_config(listen_port=0)
    with pytest.raises(ConfigError, match="seeds"):
        render_config(seeds=["nope"])


def test_render_config_quotes_a_key_yaml_would_read_as_a_number(tmp_path):
    digits = "1234567890" * 6 + "1234"
    c = load_config(write(tmp_path, render_config(cluster_key=digits)))
    assert c.cluster_key == bytes.fromhex(digits)
