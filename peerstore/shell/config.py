"""The node's YAML config file, read into frozen dataclasses.

Every key is checked by name: a bad value or an unknown key raises ConfigError naming
the file, the dotted key (``policy.parity``) and what was expected, so a broken config
never half-starts a node. ``render_config`` writes the documented file ``peerstore init``
creates; ``config.example.yaml`` is that same text with a placeholder key.

One module, though long: the reader, the defaults and the rendered, commented file describe
the same keys, and a test checks that they agree.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peerstore.core.settings import CoreSettings
from peerstore.errors import ConfigError, InvalidNameError
from peerstore.gossip.settings import GossipSettings  # pure (the simulator uses it); read here
from peerstore.model.policy import MAX_PARITY, MAX_SHARD_SIZE, MAX_STRIPE_WIDTH, MIN_SHARD_SIZE, KiB, MiB, Policy
from peerstore.watch.naming import DEFAULT_TEMPLATE, MAX_PATTERN_LEN, MAX_PATTERNS, MAX_TEMPLATE_LEN, Naming

GiB = 1024 * MiB
TiB = 1024 * GiB

MAX_CONFIG_BYTES = 1 * MiB
MAX_SEEDS = 256
MAX_WATCH_PATHS = 64
CLUSTER_KEY_BYTES = 32
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
FILE_KEY = "<file>"
TOP_KEY = "<top level>"


@dataclass(frozen=True)
class TransferSettings:
    """Flow control and retry limits for piece transfers between nodes. The defaults are
    the core's (``CoreSettings``, the one place they are written), but connect_timeout."""

    max_inflight_bytes_per_peer: int = CoreSettings.max_inflight_bytes_per_peer
    memory_budget: int = CoreSettings.memory_budget
    request_timeout: float = CoreSettings.request_timeout
    connect_timeout: float = 3.0
    retries: int = CoreSettings.retries
    backoff_base: float = CoreSettings.backoff_base
    backoff_max: float = CoreSettings.backoff_max
    forward_replicas: bool = CoreSettings.forward_replicas


@dataclass(frozen=True)
class RepairSettings:
    """Repair after node loss (docs/self-healing.md); defaults are the core's."""

    grace_seconds: float = CoreSettings.repair_grace_seconds
    max_bytes_per_second: int = CoreSettings.repair_max_bytes_per_second
    rebalance: bool = CoreSettings.repair_rebalance


@dataclass(frozen=True)
class GcSettings:
    """Garbage collection (docs/self-healing.md): each node deletes the pieces no live
    version needs, leaving alone those a running put holds a lease on. Defaults are the core's."""

    interval_seconds: float = CoreSettings.gc_interval
    lease_seconds: float = CoreSettings.gc_lease_seconds
    margin_seconds: float = CoreSettings.gc_margin_seconds


@dataclass(frozen=True)
class RetentionSettings:
    """How many versions of each checkpoint name the cluster keeps (None: all of them)."""

    keep_last: int | None = CoreSettings.retention_keep_last


@dataclass(frozen=True)
class WatchSettings:
    """Directories the node stores checkpoints from, once they are finished (docs/watcher.md)."""

    paths: tuple[Path, ...] = ()
    settle_seconds: float = 5.0
    pending_retry_seconds: float = 10.0
    name_prefix: str = ""
    name_template: str = DEFAULT_TEMPLATE
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def naming(self) -> Naming:
        """The watcher's naming rule and patterns (InvalidNameError if they are bad)."""
        return Naming(prefix=self.name_prefix, template=self.name_template, include=self.include,
                      exclude=self.exclude)


@dataclass(frozen=True)
class ScrubSettings:
    """Background re-reading of every held piece against its id (docs/self-healing.md).
    Defaults are the core's (``CoreSettings``)."""

    period: float = CoreSettings.scrub_period
    max_bytes_per_second: int = CoreSettings.scrub_max_bytes_per_second


@dataclass(frozen=True)
class LogSettings:
    """Where the daemon logs (peerstore/shell/logs.py): stderr (file None) or a file rotated
    at max_bytes keeping ``backups`` older ones; ``text`` or ``json`` lines."""

    file: Path | None = None
    format: str = "text"
    max_bytes: int = 10 * MiB
    backups: int = 5


@dataclass(frozen=True)
class Config:
    """One node's settings. ``source`` names the file they came from, for messages."""

    source: str
    data_dir: Path
    cluster_key: bytes = field(repr=False)  # a secret: keep it out of logs and tracebacks
    listen_host: str = "0.0.0.0"
    listen_port: int = 7420
    advertise_host: str | None = None  # None: the daemon detects the address peers use
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9420  # 0 disables the metrics endpoint
    node_name: str | None = None  # None: the daemon uses the host name
    seeds: tuple[tuple[str, int], ...] = ()
    mdns: bool = True
    log_level: str = "info"
    policy: Policy = Policy()
    gossip: GossipSettings = GossipSettings()
    transfer: TransferSettings = TransferSettings()
    repair: RepairSettings = RepairSettings()
    gc: GcSettings = GcSettings()
    retention: RetentionSettings = RetentionSettings()
    watch: WatchSettings = WatchSettings()
    scrub: ScrubSettings = ScrubSettings()
    log: LogSettings = LogSettings()


# ---------------------------------------------------------------------------------------
# Sizes


_SIZE_UNITS = {
    "": 1, "b": 1,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"4MiB"``, ``"64 MiB"``, ``"1.5GiB"``, ``"4096"``.

    KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB powers of 1000 (case-insensitive).
    Raises ValueError saying what is wrong.
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size; write bytes or a size like '4MiB'")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"{text!r} has an unknown unit {unit!r}; use B, KiB, MiB, GiB or TiB")
    if "." in number:
        whole, frac = number.split(".")
        numerator = int(whole + frac) * factor
        denominator = 10 ** len(frac)
        if numerator % denominator:
            raise ValueError(f"{text!r} is not a whole number of bytes")
        return numerator // denominator
    return int(number) * factor


def format_size(n: int) -> str:
    """The shortest exact spelling of ``n`` bytes that parse_size reads back: '4MiB'."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def generate_cluster_key() -> str:
    """A fresh random cluster key: 64 lowercase hex characters (32 bytes)."""
    return secrets.token_hex(CLUSTER_KEY_BYTES)


# ---------------------------------------------------------------------------------------
# Value checkers: each takes (value, fail) and returns the parsed value or calls fail().

Checker = Callable[[Any, Callable[[str], None]], Any]


def _show(value: Any) -> str:
    """How a YAML value looks in an error message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(lo: int, hi: int) -> Checker:
    def check(value, fail):
        expected = f"the integer {lo}" if lo == hi else f"an integer from {lo} to {hi}"
        if not _is_int(value) or not lo <= value <= hi:
            fail(f"expected {expected}, got {_show(value)}")
        return value

    return check


def _seconds(lo: float, hi: float) -> Checker:
    def check(value, fail):
        ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
        if not ok or not lo <= value <= hi:
            fail(f"expected a number of seconds from {lo:g} to {hi:g}, got {_show(value)}")
        return float(value)

    return check


def _size(lo: int, hi: int) -> Checker:
    def check(value, fail):
        expected = f"a size from {format_size(lo)} to {format_size(hi)} (bytes, or like '4MiB')"
        if isinstance(value, str):
            try:
                value = parse_size(value)
            except ValueError as exc:
                fail(f"expected {expected}: {exc}")
        elif not _is_int(value):
            fail(f"expected {expected}, got {_show(value)}")
        if not lo <= value <= hi:
            fail(f"expected {expected}, got {format_size(value)}")
        return value

    return check


def _boolean(value, fail):
    if not isinstance(value, bool):
        fail(f"expected true or false, got {_show(value)}")
    return value


def _text(max_len: int, *, empty_ok: bool = False) -> Checker:
    def check(value, fail):
        if not isinstance(value, str):
            hint = " (put it in quotes)" if isinstance(value, (bool, int, float)) else ""
            fail(f"expected a string{hint}, got {_show(value)}")
        if not value and not empty_ok:
            fail("expected a non-empty string")
        if len(value) > max_len:
            fail(f"expected at most {max_len} characters, got {len(value)}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            fail(f"expected printable characters, got {_show(value)}")
        return value

    return check


def _host(value, fail):
    value = _text(253)(value, fail)
    if any(c.isspace() for c in value) or value.startswith("["):
        fail(f"expected a host name or IP address (no brackets or spaces), got {_show(value)}")
    return value


def _optional(checker: Checker) -> Checker:
    return lambda value, fail: None if value is None else checker(value, fail)


def _choice(options: tuple[str, ...]) -> Checker:
    def check(value, fail):
        if not isinstance(value, str) or value.lower() not in options:
            fail(f"expected one of {', '.join(options)}, got {_show(value)}")
        return value.lower()

    return check


def _cluster_key(value, fail):
    if _is_int(value) or isinstance(value, float):
        fail("expected 64 hex characters in quotes; YAML read this key as a number")
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        got = f"{len(value)} characters" if isinstance(value, str) else _show(value)
        fail(f"expected 64 hex characters (32 bytes), got {got}; "
             "copy the key from another node's config, or run `peerstore init` for a new cluster")
    return bytes.fromhex(value.strip())


def parse_host_port(text: str) -> tuple[str, int]:
    """``"host:port"``, ``"10.0.0.5:7420"`` or ``"[::1]:7420"`` -> (host, port).

    Raises ValueError saying what is wrong.
    """
    bracketed = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})", text)
    plain = re.fullmatch(r"([^:\[\]\s]+):(\d{1,5})", text)
    if bracketed:
        host, port = bracketed.group(1), int(bracketed.group(2))
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} inside brackets is not an IPv6 address") from None
    elif plain:
        host, port = plain.group(1), int(plain.group(2))
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, like '[::1]:7420'")
    else:
        raise ValueError(f"{text!r} is not 'host:port' (like '10.0.0.5:7420')")
    if not 1 <= port <= 65535 or len(host) > 253:
        raise ValueError(f"{text!r}: port must be from 1 to 65535")
    return host, port


def _seeds(value, fail):
    if not isinstance(value, list):
        fail(f"expected a list of 'host:port' strings, got {_show(value)}")
    if len(value) > MAX_SEEDS:
        fail(f"expected at most {MAX_SEEDS} seeds, got {len(value)}")
    out: list[tuple[str, int]] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            fail(f"item {i}: expected a 'host:port' string, got {_show(item)}")
        try:
            seed = parse_host_port(item.strip())
        except ValueError as exc:
            fail(f"item {i}: {exc}")
        if seed not in out:
            out.append(seed)
    return tuple(out)


def _path_checker(base_dir: Path | None) -> Checker:
    def check(value, fail):
        text = _text(4096)(value, fail)
        path = Path(text).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return path

    return check


def _path_list(base_dir: Path | None) -> Checker:
    one = _path_checker(base_dir)

    def check(value, fail):
        if not isinstance(value, list):
            fail(f"expected a list of directories, got {_show(value)}")
        if len(value) > MAX_WATCH_PATHS:
            fail(f"expected at most {MAX_WATCH_PATHS} paths, got {len(value)}")
        out = []
        for i, item in enumerate(value):
            out.append(one(item, lambda problem, i=i: fail(f"item {i}: {problem}")))
        return tuple(out)

    return check


# ---------------------------------------------------------------------------------------
# Schema: for each section, key -> checker. Defaults come from the dataclasses.

_POLICY_KEYS: dict[str, Checker] = {
    "replicas": _integer(2, 2),
    "stripe_width": _integer(1, MAX_STRIPE_WIDTH),
    "parity": _integer(0, MAX_PARITY),
    "shard_size": _size(MIN_SHARD_SIZE, MAX_SHARD_SIZE),
    "min_tolerance": _integer(0, MAX_PARITY + 1),
}

_GOSSIP_KEYS: dict[str, Checker] = {
    "probe_interval": _seconds(0.05, 60),
    "probe_timeout": _seconds(0.01, 60),
    "indirect_checks": _integer(0, 16),
    "suspicion_mult": _integer(1, 32),
    "suspicion_max_timeout_mult": _integer(1, 100),
    "awareness_max_multiplier": _integer(1, 64),
    "gossip_interval": _seconds(0.01, 60),
    "gossip_nodes": _integer(1, 64),
    "retransmit_mult": _integer(1, 32),
    "pushpull_interval": _seconds(1, 86400),
    "dead_reclaim_time": _seconds(0, 30 * 86400),
    "tombstone_lifetime": _seconds(60, 365 * 86400),
}

_TRANSFER_KEYS: dict[str, Checker] = {
    "max_inflight_bytes_per_peer": _size(MIN_SHARD_SIZE, 4 * GiB),
    "memory_budget": _size(1 * MiB, 64 * GiB),
    "request_timeout": _seconds(0.1, 3600),
    "connect_timeout": _seconds(0.1, 600),
    "retries": _integer(0, 100),
    "backoff_base": _seconds(0.001, 60),
    "forward_replicas": _boolean,
    "backoff_max": _seconds(0.001, 3600),
}


_REPAIR_KEYS: dict[str, Checker] = {
    "grace_seconds": _seconds(0, 30 * 86400),
    "max_bytes_per_second": _size(0, 64 * GiB),
    "rebalance": _boolean,
}


def _patterns(value, fail):
    if not isinstance(value, list):
        fail(f"expected a list of glob patterns like [\"checkpoint-*\"], got {_show(value)}")
    if len(value) > MAX_PATTERNS:
        fail(f"expected at most {MAX_PATTERNS} patterns, got {len(value)}")
    return tuple(_text(MAX_PATTERN_LEN)(item, lambda problem, i=i: fail(f"item {i}: {problem}"))
                 for i, item in enumerate(value))


def _watch_keys(base_dir: Path | None) -> dict[str, Checker]:
    return {
        "paths": _path_list(base_dir),
        "settle_seconds": _seconds(0, 3600),
        "pending_retry_seconds": _seconds(0.1, 86400),
        "name_prefix": _text(100, empty_ok=True),
        "name_template": _text(MAX_TEMPLATE_LEN),
        "include": _patterns,
        "exclude": _patterns,
    }


def _check_watch(reader: "_Reader", watch: WatchSettings, data_dir: Path) -> None:
    try:
        watch.naming()
    except InvalidNameError as err:
        text = str(err)
        key = ("watch.name_template" if "template" in text and "name_prefix" not in text
               else "watch.include" if text.startswith("watch include")
               else "watch.exclude" if text.startswith("watch exclude") else "watch.name_prefix")
        reader.fail(key, text)
    data = Path(os.path.abspath(data_dir))
    seen: list[Path] = []
    for i, path in enumerate(watch.paths):
        watched = Path(os.path.abspath(path))
        if data == watched or data.is_relative_to(watched):
            reader.fail(f"watch.paths.{i}", f"{path} holds this node's data_dir ({data_dir}); the node would "
                        "store its own pieces: watch a directory beside it")
        for other in seen:
            if watched == other or watched.is_relative_to(other) or other.is_relative_to(watched):
                reader.fail(f"watch.paths.{i}", f"{path} overlaps {other}; list each directory once")
        seen.append(watched)


_GC_KEYS: dict[str, Checker] = {
    "interval_seconds": _seconds(0.1, 86400),
    "lease_seconds": _seconds(1, 86400),
    "margin_seconds": _seconds(0, 86400),
}
_RETENTION_KEYS: dict[str, Checker] = {"keep_last": _optional(_integer(1, 1_000_000))}

_SCRUB_KEYS: dict[str, Checker] = {
    "period": _seconds(0, 365 * 86400),
    "max_bytes_per_second": _size(64 * KiB, 64 * GiB),
}

_LOG_KEYS: dict[str, Checker] = {
    "file": _optional(_path_checker(None)),  # relative: resolved against the config's directory below
    "format": _choice(LOG_FORMATS),
    "max_bytes": _size(1 * KiB, 1 * GiB),
    "backups": _integer(1, 100),
}

_LISTEN_KEYS: dict[str, Checker] = {"host": _host, "port": _integer(1, 65535)}
_METRICS_KEYS: dict[str, Checker] = {"host": _host, "port": _integer(0, 65535)}

_SECTIONS = ("listen", "metrics", "policy", "gossip", "transfer", "repair", "gc", "retention", "watch", "scrub", "log")
_SCALARS: dict[str, Checker] = {
    "advertise_host": _optional(_host),
    "node_name": _optional(_text(64)),
    "seeds": _seeds,
    "mdns": _boolean,
    "log_level": _choice(LOG_LEVELS),
}
TOP_LEVEL_KEYS = ("data_dir", "cluster_key", *_SECTIONS[:2], *_SCALARS, *_SECTIONS[2:])


class _Reader:
    """Walks a parsed YAML mapping, raising ConfigError(source, dotted key, problem)."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str):
        raise ConfigError(self.source, key, problem)

    def section(self, data: Any, where: str, checkers: Mapping[str, Checker]) -> dict[str, Any]:
        """Check a mapping's keys and values; returns only the keys present."""
        if data is None:  # a section whose keys are all commented out
            return {}
        if not isinstance(data, Mapping):
            self.fail(where, f"expected a mapping of settings, got {_show(data)}")
        self.reject_unknown(data, where, checkers)
        out = {}
        for key, value in data.items():
            dotted = f"{where}.{key}" if where != TOP_KEY else key
            out[key] = checkers[key](value, lambda problem, k=dotted: self.fail(k, problem))
        return out

    def reject_unknown(self, data: Mapping, where: str, known) -> None:
        for key in data:
            if isinstance(key, str) and key in known:
                continue
            dotted = f"{where}.{key}" if where != TOP_KEY else str(key)
            section, _, sub = str(key).partition("_")
            close = difflib.get_close_matches(str(key), list(known), n=1)
            if where == TOP_KEY and section in ("listen", "metrics") and sub in ("host", "port"):
                hint = f"; write it as {section}: {{{sub}: ...}}"  # the Config field name, not YAML's
            elif close:
                hint = f"; did you mean {close[0]!r}?"
            else:
                hint = f"; known keys: {', '.join(known)}"
            self.fail(dotted, f"unknown key{hint}")


def config_from_mapping(data: Any, source: str, base_dir: Path | None = None) -> Config:
    """Validate parsed YAML into a Config. Relative paths resolve against ``base_dir``."""
    reader = _Reader(source)
    if data is None:
        reader.fail(TOP_KEY, "the file is empty; run `peerstore init` to write a config")
    if not isinstance(data, Mapping):
        reader.fail(TOP_KEY, f"expected a mapping of settings, got {_show(data)}")
    reader.reject_unknown(data, TOP_KEY, TOP_LEVEL_KEYS)

    if "data_dir" not in data:
        reader.fail("data_dir", "missing; set it to the directory this node keeps its pieces in")
    if "cluster_key" not in data:
        reader.fail("cluster_key", "missing; run `peerstore init` to make a config with a fresh key, "
                    "or copy the key from another node of the cluster")
    base = reader.section(
        {k: data[k] for k in ("data_dir", "cluster_key", *_SCALARS) if k in data},
        TOP_KEY,
        {"data_dir": _path_checker(base_dir), "cluster_key": _cluster_key, **_SCALARS},
    )
    listen = reader.section(data.get("listen"), "listen", _LISTEN_KEYS)
    metrics = reader.section(data.get("metrics"), "metrics", _METRICS_KEYS)

    policy = Policy(**reader.section(data.get("policy"), "policy", _POLICY_KEYS))
    for key, problem in policy.problems():
        reader.fail(f"policy.{key}", problem)

    gossip = GossipSettings(**reader.section(data.get("gossip"), "gossip", _GOSSIP_KEYS))
    if gossip.probe_timeout > gossip.probe_interval:
        reader.fail("gossip.probe_timeout", f"must not exceed gossip.probe_interval "
                    f"({gossip.probe_interval:g}), got {gossip.probe_timeout:g}")

    transfer = TransferSettings(**reader.section(data.get("transfer"), "transfer", _TRANSFER_KEYS))
    if transfer.max_inflight_bytes_per_peer < policy.shard_size:
        reader.fail("transfer.max_inflight_bytes_per_peer", "must be at least policy.shard_size "
                    f"({format_size(policy.shard_size)}) so one piece fits, "
                    f"got {format_size(transfer.max_inflight_bytes_per_peer)}")
    if transfer.memory_budget < transfer.max_inflight_bytes_per_peer:
        reader.fail("transfer.memory_budget", "must be at least transfer.max_inflight_bytes_per_peer "
                    f"({format_size(transfer.max_inflight_bytes_per_peer)}), "
                    f"got {format_size(transfer.memory_budget)}")
    if transfer.backoff_max < transfer.backoff_base:
        reader.fail("transfer.backoff_max", f"must be at least transfer.backoff_base "
                    f"({transfer.backoff_base:g}), got {transfer.backoff_max:g}")

    repair = RepairSettings(**reader.section(data.get("repair"), "repair", _REPAIR_KEYS))
    gc = GcSettings(**reader.section(data.get("gc"), "gc", _GC_KEYS))
    retention = RetentionSettings(**reader.section(data.get("retention"), "retention", _RETENTION_KEYS))

    watch = WatchSettings(**reader.section(data.get("watch"), "watch", _watch_keys(base_dir)))
    _check_watch(reader, watch, base["data_dir"])
    scrub = ScrubSettings(**reader.section(data.get("scrub"), "scrub", _SCRUB_KEYS))
    log = LogSettings(**reader.section(data.get("log"), "log", _LOG_KEYS))
    if log.file is not None and base_dir is not None and not log.file.is_absolute():
        log = dataclasses.replace(log, file=base_dir / log.file)

    return Config(
        source=source,
        **base,
        **{f"listen_{k}": v for k, v in listen.items()},
        **{f"metrics_{k}": v for k, v in metrics.items()},
        policy=policy,
        gossip=gossip,
        transfer=transfer,
        repair=repair,
        gc=gc,
        retention=retention,
        watch=watch,
        scrub=scrub,
        log=log,
    )


# ---------------------------------------------------------------------------------------
# Reading files


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last)."""


def _construct_mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_mapping_without_duplicates)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every problem raises ConfigError naming it."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(source, FILE_KEY, "no such file; run `peerstore init` to create one") from None
    except OSError as exc:
        raise ConfigError(source, FILE_KEY, f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(source, FILE_KEY, f"larger than {format_size(MAX_CONFIG_BYTES)}; "
                          "is this really a peerstore config?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, FILE_KEY, f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(source, FILE_KEY, f"not valid YAML: {_describe_yaml_error(exc)}") from None
    return config_from_mapping(data, source, base_dir=path.resolve().parent)


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


# ---------------------------------------------------------------------------------------
# Writing files

_RENDER_OVERRIDES = ("data_dir", "cluster_key", "listen_host", "listen_port", "advertise_host",
                     "metrics_host", "metrics_port", "node_name", "seeds", "mdns", "log_level")
DEFAULT_DATA_DIR = "~/.local/share/peerstore"


_BARE_STRING = re.compile(r"[A-Za-z0-9_./~@-][A-Za-z0-9_./~@:-]*")


def _yaml_value(value: Any) -> str:
    """A YAML literal for a simple value (JSON is YAML; floats keep their dot)."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and _BARE_STRING.fullmatch(value) and yaml.safe_load(value) == value:
        return value  # unquoted only where YAML reads it back as this very string
    if isinstance(value, float):
        text = repr(value)
        if not re.fullmatch(r"-?\d+\.\d+", text):
            raise ValueError(f"cannot render {value!r} as a plain YAML float")
        return text
    if isinstance(value, (list, tuple)):
        return json.dumps([str(v) for v in value])
    return json.dumps(value)


def render_config(**overrides: Any) -> str:
    """The documented YAML file ``peerstore init`` writes; load_config accepts it.

    Overrides (any of data_dir, cluster_key, listen_host, listen_port, advertise_host,
    metrics_host, metrics_port, node_name, seeds, mdns, log_level) replace the defaults;
    ``seeds`` is a list of "host:port" strings. Without ``cluster_key`` a fresh one is made.
    Raises TypeError for an unknown override and ConfigError for a bad value.
    """
    unknown = set(overrides) - set(_RENDER_OVERRIDES)
    if unknown:
        raise TypeError(f"render_config() got unknown settings: {', '.join(sorted(unknown))}")
    defaults = Config(source="", data_dir=Path(DEFAULT_DATA_DIR), cluster_key=b"")
    v = {name: getattr(defaults, name) for name in _RENDER_OVERRIDES}
    v["data_dir"] = DEFAULT_DATA_DIR
    v["cluster_key"] = generate_cluster_key()
    v["seeds"] = []
    v.update(overrides)
    if isinstance(v["cluster_key"], bytes):
        v["cluster_key"] = v["cluster_key"].hex()
    v["seeds"] = [s if isinstance(s, str) else _format_host_port(*s) for s in v["seeds"]]

    p, g, t, w, r = Policy(), GossipSettings(), TransferSettings(), WatchSettings(), RepairSettings()
    y = _yaml_value
    text = _TEMPLATE.format(
        data_dir=y(v["data_dir"]), cluster_key=y(v["cluster_key"]),
        listen_host=y(v["listen_host"]), listen_port=y(v["listen_port"]),
        advertise_host=y(v["advertise_host"]),
        metrics_host=y(v["metrics_host"]), metrics_port=y(v["metrics_port"]),
        node_name=y(v["node_name"]), seeds=y(v["seeds"]), mdns=y(v["mdns"]),
        log_level=y(v["log_level"]),
        replicas=p.replicas, stripe_width=p.stripe_width, parity=p.parity,
        shard_size=y(format_size(p.shard_size)), min_tolerance=p.min_tolerance,
        **{k: y(val) for k, val in dataclasses.asdict(g).items()},
        max_inflight_bytes_per_peer=y(format_size(t.max_inflight_bytes_per_peer)),
        memory_budget=y(format_size(t.memory_budget)),
        request_timeout=y(t.request_timeout), connect_timeout=y(t.connect_timeout),
        retries=t.retries, backoff_base=y(t.backoff_base), backoff_max=y(t.backoff_max),
        forward_replicas=y(t.forward_replicas),
        grace_seconds=y(r.grace_seconds), repair_max_bytes_per_second=y(format_size(r.max_bytes_per_second)),
        rebalance=y(r.rebalance),
        gc_interval_seconds=y(GcSettings().interval_seconds), gc_lease_seconds=y(GcSettings().lease_seconds),
        gc_margin_seconds=y(GcSettings().margin_seconds), keep_last=y(RetentionSettings().keep_last),
        watch_paths=y([str(x) for x in w.paths]), settle_seconds=y(w.settle_seconds),
        pending_retry_seconds=y(w.pending_retry_seconds), name_prefix=y(w.name_prefix),
        name_template=y(w.name_template), include=y(list(w.include)), exclude=y(list(w.exclude)),
        scrub_period=y(ScrubSettings().period),
        scrub_max_bytes_per_second=y(format_size(ScrubSettings().max_bytes_per_second)),
        log_file=y(LogSettings().file), log_format=y(LogSettings().format),
        log_max_bytes=y(format_size(LogSettings().max_bytes)), log_backups=y(LogSettings().backups),
    )
    # Validate now so a bad override fails at `peerstore init`, not at the first `peerstore node`.
    config_from_mapping(yaml.load(text, Loader=_StrictLoader), "<rendered config>")
    return text


EXAMPLE_CLUSTER_KEY = "0123456789abcdef" * 4
_EXAMPLE_HEADER = """\
# config.example.yaml: every key peerstore reads, with its default. Generated by
# peerstore.shell.config.render_example_config(); `peerstore init` writes the same file with a
# fresh cluster key. Replace the placeholder cluster_key below before real use.

"""


def render_example_config() -> str:
    """The text of config.example.yaml: render_config with a placeholder cluster key."""
    return _EXAMPLE_HEADER + render_config(cluster_key=EXAMPLE_CLUSTER_KEY)


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_TEMPLATE = """\
# peerstore node configuration. Only data_dir and cluster_key are required; every other
# key shows its default. Sizes are bytes or strings like "4MiB"; durations are seconds.

# Where this node keeps its identity, pieces and catalog. Relative paths are relative to
# this file. Needs room for this node's share of every checkpoint.
data_dir: {data_dir}

# Shared secret of the cluster: 64 hex characters, the same on every node. Nodes with a
# different key cannot talk to this one. Keep it private (it is never sent over the wire).
cluster_key: {cluster_key}

# Where the daemon accepts peer connections and CLI requests (TCP) and gossip (UDP).
listen:
  # Address to bind; 0.0.0.0 is every IPv4 interface, :: every IPv6 one.
  host: {listen_host}
  # TCP and UDP port, 1 to 65535; the same on every node keeps seeds simple.
  port: {listen_port}

# The address other nodes use to reach this one; null means detect it.
advertise_host: {advertise_host}

# Prometheus /metrics endpoint (HTTP).
metrics:
  # Address to bind; 127.0.0.1 keeps it private to this machine.
  host: {metrics_host}
  # Port, 1 to 65535; 0 turns the endpoint off.
  port: {metrics_port}

# A human label for this node in `peerstore status`; null means the host name.
node_name: {node_name}

# Nodes to contact at start, as "host:port" ("[::1]:7420" for IPv6). Needed where
# multicast DNS does not reach; any one live node is enough to join.
seeds: {seeds}

# Find other nodes on the local network with multicast DNS (_peerstore._tcp.local.).
mdns: {mdns}

# How much the daemon logs: debug, info, warning or error.
log_level: {log_level}

# Where the daemon logs (docs/observability.md, "Logs"). `peerstore node --log-format
# --log-file` override these (the service `peerstore service install` sets up logs json).
log:
  # A file to log to instead of stderr, rotated by size; null logs to stderr (the journal
  # under systemd). Relative paths are relative to this file.
  file: {log_file}
  # text (HH:MM:SS LEVEL logger: message) or json (one object per line, for Promtail).
  format: {log_format}
  # Size at which the file is rotated (file.1, file.2, ...), 1KiB to 1GiB.
  max_bytes: {log_max_bytes}
  # Rotated files kept beside the current one, 1 to 100; older ones are deleted.
  backups: {log_backups}

# How a checkpoint is cut up and spread. Stored checkpoints keep the policy they were
# stored under; a change applies to new puts.
policy:
  # Full copies of every data shard, each on a different node. Always 2.
  replicas: {replicas}
  # Data shards per stripe (k); parity is computed over each stripe. 1 to 16.
  stripe_width: {stripe_width}
  # zfec parity chunks per stripe (p). 0 to 16.
  parity: {parity}
  # Bytes per data shard, 64KiB to 64MiB. Small shards cost throughput.
  shard_size: {shard_size}
  # A put fails unless its checkpoint survives this many extra node failures. 0 to parity+1.
  min_tolerance: {min_tolerance}

# Membership (SWIM with Lifeguard). Defaults are memberlist's LAN profile; change them
# only for slow or lossy networks, and the same way on every node.
gossip:
  # Seconds between failure-detection probes of one random member.
  probe_interval: {probe_interval}
  # Seconds to wait for a direct probe's ack before asking others; at most probe_interval.
  probe_timeout: {probe_timeout}
  # Members asked to probe an unresponsive node on our behalf.
  indirect_checks: {indirect_checks}
  # Scales how long a node stays suspect before it is declared dead.
  suspicion_mult: {suspicion_mult}
  # Upper bound of the suspicion timeout, as a multiple of its lower bound.
  suspicion_max_timeout_mult: {suspicion_max_timeout_mult}
  # How far this node slows its own probing when it seems unhealthy itself (Lifeguard).
  awareness_max_multiplier: {awareness_max_multiplier}
  # Seconds between gossip rounds that spread membership updates.
  gossip_interval: {gossip_interval}
  # Members sent each gossip round.
  gossip_nodes: {gossip_nodes}
  # Scales how many times each update is retransmitted.
  retransmit_mult: {retransmit_mult}
  # Seconds between full state syncs with a random member (also heals partitions).
  pushpull_interval: {pushpull_interval}
  # Seconds before another node may take over a dead node's address.
  dead_reclaim_time: {dead_reclaim_time}
  # Seconds a dead member is remembered before it is forgotten.
  tombstone_lifetime: {tombstone_lifetime}

# Moving pieces between nodes.
transfer:
  # Most bytes sent to one peer and not yet acknowledged (about 2 s of the measured
  # link rate are kept in flight, at least two shards); at least policy.shard_size.
  max_inflight_bytes_per_peer: {max_inflight_bytes_per_peer}
  # Buffer memory this node uses for all transfers together; at least the line above.
  memory_budget: {memory_budget}
  # Seconds a peer may stay silent (no bytes moving to or from it) before a request to
  # it is given up and another node is tried; time queued behind other transfers is not counted.
  request_timeout: {request_timeout}
  # Seconds to wait for a TCP connection.
  connect_timeout: {connect_timeout}
  # Attempts per request after the first, with exponential backoff.
  retries: {retries}
  # First backoff delay, in seconds.
  backoff_base: {backoff_base}
  # Longest backoff delay, in seconds; at least backoff_base.
  backoff_max: {backoff_max}
  # A put sends each data shard once; its first holder forwards it to the second, which
  # acknowledges to the coordinator (false: the coordinator sends both copies itself).
  forward_replicas: {forward_replicas}

# Repair after node loss (docs/self-healing.md): the pieces of a member away longer than
# the grace period are re-created on the others until every checkpoint is back at its
# policy, only while this node sees a majority of the last stable membership.
repair:
  # Seconds a member may be away (a reboot, a pulled cable) before its pieces are re-created.
  grace_seconds: {grace_seconds}
  # Bytes per second this node's repair writes at most; 0 means unlimited.
  max_bytes_per_second: {repair_max_bytes_per_second}
  # Drop surplus copies (a node came back after its pieces were re-created elsewhere) and
  # move copies onto new or emptier nodes until every node holds about its fair share.
  rebalance: {rebalance}

# Garbage collection (docs/self-healing.md): every node deletes the pieces that no live
# version needs any more (after `peerstore rm`, retention, or a failed put), so rm frees
# disk space within about interval_seconds. A running put holds a lease on its pieces; GC
# waits lease_seconds after the put's last renewal, plus margin_seconds, before it may
# take them. The same values on every node.
gc:
  # Seconds between collection passes on this node.
  interval_seconds: {gc_interval_seconds}
  # Seconds a put's lease on a piece lasts; the put renews it three times per period.
  lease_seconds: {gc_lease_seconds}
  # Extra seconds GC waits after a lease ran out (covers a slow catalog update).
  margin_seconds: {gc_margin_seconds}

# Retention: keep only the newest keep_last versions of each checkpoint name; older ones
# are removed (as by `peerstore rm NAME@V`) and GC frees their space. null keeps every version.
retention:
  # Versions kept per name (1 or more); null keeps them all.
  keep_last: {keep_last}

# The watcher: the node stores every checkpoint written into these directories once it is
# finished (never a partial one), each version once. `peerstore watch DIR` does the same in
# the foreground. Rules per format, naming and caveats: docs/watcher.md.
watch:
  # Directories to watch, e.g. [runs/]. Relative paths are relative to this file.
  paths: {watch_paths}
  # Seconds a checkpoint must stay unchanged before it is stored. On macOS (no close
  # events) this quiet time is the only sign a file is finished: keep it above the
  # longest pause of your trainer's writes.
  settle_seconds: {settle_seconds}
  # Seconds between looks at a checkpoint that is not finished or could not be stored yet.
  pending_retry_seconds: {pending_retry_seconds}
  # Put in front of every name ({{prefix}} in name_template), e.g. "pi4/".
  name_prefix: {name_prefix}
  # The name of a checkpoint from its path: {{run}} is the directories between the watched
  # directory and the checkpoint, {{checkpoint}} its own name, so runs/llama/checkpoint-500
  # becomes llama/checkpoint-500.
  name_template: {name_template}
  # Store only checkpoints matching one of these globs (empty: all). A pattern without "/"
  # matches the checkpoint's own name ("checkpoint-*"), one with "/" its whole path.
  include: {include}
  # Never store checkpoints matching one of these globs.
  exclude: {exclude}

# Scrub: every node re-reads each piece it holds once per period and checks it against its
# BLAKE3 id. A copy that no longer matches (bit rot) is moved to data_dir/quarantine and
# re-created from a replica or from parity. `peerstore verify` does the same check on demand.
scrub:
  # Seconds in which every piece is re-read once (604800: a week). 0 turns scrub off.
  period: {scrub_period}
  # Upper bound on the re-read rate, whatever the period asks; on a slow disk a pass then
  # takes longer than the period (`peerstore status` says so).
  max_bytes_per_second: {scrub_max_bytes_per_second}
"""
