"""``peerstore local N --set KEY=VALUE``: config overrides applied to every node.

KEY is a dotted config key (``repair.grace_seconds``, ``log_level``); VALUE is read as
YAML, so ``15``, ``true``, ``4MiB`` and ``["/data/runs"]`` mean what they would in the
file. The override is written into the rendered config text in place of the key's line
(the documentation comments stay), and the result is checked with the config reader, so a
bad key or value fails before any node starts, with the same message a config file gets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from peerstore.errors import ConfigError, UsageError
from peerstore.shell.config import config_from_mapping

MAX_OVERRIDES = 64
MAX_VALUE_CHARS = 4096
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,3}")

# What `peerstore local` sets differently on each node: one value for all would break it.
PER_NODE_KEYS = {
    "data_dir": "each node keeps its data in DATA/local/node-I/store (choose DATA with --data)",
    "cluster_key": "the local cluster keeps its key in DATA/local/cluster.key",
    "listen": "node I listens on 127.0.0.1:BASE+I (choose BASE with --base-port)",
    "listen.host": "the local cluster listens on 127.0.0.1 only",
    "listen.port": "node I listens on BASE+I (choose BASE with --base-port)",
    "metrics": "node I serves metrics on PORT+I (choose PORT with --metrics-base-port)",
    "metrics.port": "node I serves metrics on PORT+I (choose PORT with --metrics-base-port; 0 turns them off)",
    "seeds": "every node has every other node as a seed",
    "node_name": "node I is named local-I",
}


def parse_override(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (dotted key, value read as YAML); UsageError saying what is wrong."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE, like --set repair.grace_seconds=15")
    if not _KEY.fullmatch(key):
        raise UsageError(f"--set {text!r}: {key!r} is not a config key; keys are dotted names "
                         "like gc.interval_seconds or log_level")
    if len(raw) > MAX_VALUE_CHARS:
        raise UsageError(f"--set {key}: the value is longer than {MAX_VALUE_CHARS} characters")
    reason = PER_NODE_KEYS.get(key)
    if reason is not None:
        raise UsageError(f"--set {key}: peerstore local sets this per node: {reason}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"--set {key}: {raw!r} is not a YAML value ({problem}); "
                         "quote strings that contain ':' or '#', e.g. --set 'KEY=\"a: b\"'") from None
    return key, value


def parse_overrides(texts: Iterable[str]) -> list[tuple[str, Any]]:
    """Every ``--set`` in order; a key given twice is refused (which one was meant?)."""
    out: list[tuple[str, Any]] = []
    for text in texts:
        key, value = parse_override(text)
        if any(k == key for k, _ in out):
            raise UsageError(f"--set {key} is given twice; give each key once")
        for other, _ in out:
            if key.startswith(other + ".") or other.startswith(key + "."):
                raise UsageError(f"--set {key} and --set {other} overlap; set only one of them")
        out.append((key, value))
    if len(out) > MAX_OVERRIDES:
        raise UsageError(f"at most {MAX_OVERRIDES} --set options, got {len(out)}")
    return out


def apply_overrides(config_text: str, overrides: Iterable[tuple[str, Any]], *, source: str = "--set",
                    base_dir: Path | None = None) -> str:
    """``config_text`` (a rendered config) with each (dotted key, value) set; checked with
    the config reader (relative paths against ``base_dir``, the config file's directory),
    so a bad key or value raises ConfigError naming the key."""
    text = config_text
    pairs = list(overrides)
    for key, value in pairs:
        text = _set_line(text, key.split("."), _flow(value))
    data = yaml.safe_load(text)
    for key, value in pairs:
        got = _lookup(data, key.split("."))
        if got != value:  # pragma: no cover - the edit above is wrong: a bug, not bad input
            raise RuntimeError(f"setting {key} in the rendered config gave {got!r}, not {value!r}")
    config_from_mapping(data, source, base_dir=base_dir)
    return text


def _flow(value: Any) -> str:
    """``value`` as one line of YAML that reads back equal (a plain word stays unquoted)."""
    if isinstance(value, str) and _BARE.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    if not (isinstance(value, float) and not math.isfinite(value)):
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False)  # JSON is YAML flow style
        except (TypeError, ValueError):
            pass
    dumped = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True).strip()
    return dumped.removesuffix("...").strip()


def _lookup(data: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return _MISSING
        data = data[part]
    return data


_MISSING = object()
_BARE = re.compile(r"[A-Za-z0-9_./~@-][A-Za-z0-9_./~@-]*")


def _set_line(text: str, path: list[str], value: str) -> str:
    """Replace the line of ``path`` (top-level ``key:`` or ``section:`` / ``  key:``) in
    the rendered config with ``value``; add the key (and its section) if absent."""
    lines = text.splitlines()
    if len(path) == 1:
        index = _find(lines, 0, len(lines), path[0], indent="")
        if index is None:
            lines.append(f"{path[0]}: {value}")
        else:
            lines[index] = f"{path[0]}: {value}"
        return "\n".join(lines) + "\n"
    if len(path) > 2:
        raise ConfigError("--set", ".".join(path), "unknown key; config keys are at most SECTION.KEY")
    section, key = path
    head = _find(lines, 0, len(lines), section, indent="")
    if head is None:
        lines += ["", f"{section}:", f"  {key}: {value}"]
        return "\n".join(lines) + "\n"
    if lines[head].partition(":")[2].split("#")[0].strip():
        raise ConfigError("--set", ".".join(path), f"{section} is not a section of the config")
    end = head + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    index = _find(lines, head + 1, end, key, indent="  ")
    if index is None:
        last = max((i for i in range(head, end) if lines[i].startswith("  ") and lines[i].strip()), default=head)
        lines.insert(last + 1, f"  {key}: {value}")
    else:
        lines[index] = f"  {key}: {value}"
    return "\n".join(lines) + "\n"


def _find(lines: list[str], start: int, end: int, key: str, indent: str) -> int | None:
    pattern = re.compile(re.escape(indent) + re.escape(key) + r":(\s|$)")
    for i in range(start, end):
        if pattern.match(lines[i]):
            return i
    return None
