"""The ``peerstore`` command: run a node, or store, fetch, list and remove checkpoints.

Every subcommand except ``node``, ``init`` and ``local`` talks to one node over the
client protocol (:mod:`peerstore.shell.client`). Errors print one line, ``peerstore: REASON``,
on stderr and set the exit code; a traceback means a bug.

One module, though long: each subcommand is a short parser plus a short handler, and keeping
them together keeps the help texts, exit codes and error style consistent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio
import yaml

from peerstore.shell.client import DEFAULT_TIMEOUT, NodeClient
from peerstore.shell.client.connection import where_of
from peerstore.shell.config import Config, config_from_mapping, load_config, parse_host_port, render_config
from peerstore.shell.durable import write_file_atomic
from peerstore.errors import (
    ConfigError,
    InvalidNameError,
    NotFoundError,
    OutcomeUnknownError,
    PeerstoreError,
    UsageError,
)
from peerstore.model.names import parse_spec
from peerstore.shell.peercred import client_socket_path
from peerstore.shell.client.progress import Progress, human_size
from peerstore.cli.service import add_service_parser
from peerstore.cli.verify_report import exit_code as verify_exit_code
from peerstore.cli.verify_report import format_report as format_verify_report
from peerstore.cli.verify_report import format_scrub

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3
EXIT_NOT_FOUND = 4
EXIT_INTERRUPTED = 130

CONFIG_ENV = "PEERSTORE_CONFIG"
LOCAL_CLIENT_CONFIG = Path("data") / "local" / "client.yaml"

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    the operation failed (the reason is printed on stderr)
  2    usage or config error (bad arguments, bad or missing config file)
  3    outcome unknown: the connection dropped after a put was sent; check with 'peerstore ls NAME'
  4    not found: no such checkpoint or version
  130  interrupted (Ctrl-C)
"""

MAIN_EPILOG = f"""\
examples:
  ./launch.sh --local 5                          a 5-node demo cluster on this machine
  peerstore put checkpoint-500/ --name run1/step-500
  peerstore ls
  peerstore get run1/step-500 --out restored/
  peerstore status
  peerstore watch runs/                          store every finished checkpoint written into runs/

config: --config PATH, else ${CONFIG_ENV}, else ./config.yaml, else ./{LOCAL_CLIENT_CONFIG}
(written by 'peerstore local'). The CLI needs the cluster key from it, and talks to
127.0.0.1:<listen port> unless --node says otherwise.

{EXIT_CODES_HELP}"""


# ---------------------------------------------------------------------------------------
# Arguments


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 86400, got {text}")
    return value


def _settle_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 3600, got {text}")
    return value


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {value}")
    return value


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every subcommand accepts, before or after its name."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument("--config", metavar="PATH", default=default(None),
                       help=f"config file (default: ${CONFIG_ENV}, ./config.yaml, ./{LOCAL_CLIENT_CONFIG})")
    group.add_argument("--node", metavar="HOST:PORT", type=_host_port, default=default(None),
                       help="the node to talk to (default: this machine, the config's listen port)")
    group.add_argument("--quiet", "-q", action="store_true", default=default(False),
                       help="no progress display")
    group.add_argument("--timeout", metavar="SECONDS", type=_positive_seconds, default=default(DEFAULT_TIMEOUT),
                       help=f"give up on a node that stays silent this long (default {DEFAULT_TIMEOUT:g})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerstore",
        description="Store ML training checkpoints across the machines you have: every shard on two "
                    "nodes plus erasure-coded parity, restored byte-identical or not at all.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str, epilog: str, func: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description, parents=[common],
                           epilog=epilog + "\n" + EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("node", "run this machine's node (the daemon)",
                "Run the peerstore node daemon in the foreground until Ctrl-C or SIGTERM.",
                "examples:\n  peerstore node --config config.yaml\n  ./launch.sh            (the same, from ./config.yaml)\n"
                "  peerstore node --log-format json --log-file /var/log/peerstore/node.log\n",
                cmd_node)
    p.add_argument("--log-format", choices=("text", "json"), help="override the config's log.format")
    p.add_argument("--log-file", metavar="PATH", help="override the config's log.file (rotated by size)")
    add_service_parser(command, resolve_config_path)

    p = command("init", "write a config file with a fresh cluster key",
                "Write a documented config file. Without --cluster-key it makes a new cluster key: copy "
                "that key to every other machine's config (or run init there with --cluster-key).",
                "examples:\n  peerstore init\n  peerstore init --data-dir /mnt/ssd/peerstore --seeds 10.0.0.5:7420\n"
                "  peerstore init --cluster-key <key from the first machine> --seeds 10.0.0.5:7420\n", cmd_init)
    p.add_argument("--data-dir", metavar="DIR", help="where this node keeps its pieces (default ~/.local/share/peerstore)")
    p.add_argument("--listen-port", metavar="PORT", type=_port, help="TCP/UDP port of the node (default 7420)")
    p.add_argument("--seeds", metavar="HOST:PORT[,HOST:PORT...]", action="append", default=[],
                   help="nodes to contact at start, where multicast DNS does not reach (repeatable)")
    p.add_argument("--cluster-key", metavar="HEX", help="join an existing cluster: its 64-hex-character key")
    p.add_argument("--force", action="store_true", help="overwrite an existing config file")
    p.add_argument("-o", "--output", metavar="PATH", default="config.yaml", help="file to write (default config.yaml)")

    p = command("put", "store a file or a directory as a checkpoint",
                "Store PATH (one file, or a directory of files) under NAME. Prints the version and its "
                "tolerance: how many more simultaneous node failures it survives.",
                "examples:\n  peerstore put model.safetensors --name llama/base\n"
                "  peerstore put checkpoint-500/ --name run1/step-500\n", cmd_put)
    p.add_argument("path", metavar="PATH", help="file or directory to store")
    p.add_argument("--name", required=True, help="checkpoint name, e.g. run1/step-500 (letters, digits, . _ + - and /)")
    p.add_argument("--stream", action="store_true",
                   help="send the bytes through the connection even when the node runs on this machine")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = command("get", "restore a checkpoint",
                "Fetch SPEC (NAME for the latest version, NAME@V for one version) and write it, verified "
                "against its BLAKE3 hashes, under a temporary name that is renamed into place at the end. "
                "An existing file is never replaced without --force, and never harmed by a failed get.",
                "examples:\n  peerstore get run1/step-500                 writes ./step-500\n"
                "  peerstore get llama/base@3 --out model.safetensors\n"
                "  peerstore get run1/step-500 --out /data/ckpt --force\n", cmd_get)
    p.add_argument("spec", metavar="SPEC", help="NAME or NAME@VERSION")
    p.add_argument("--out", metavar="PATH", help="where to write it (default ./<last part of NAME>). A "
                   "single-file checkpoint goes inside PATH if PATH is a directory or ends with '/'; a "
                   "directory checkpoint becomes PATH (which may be an empty directory)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--stream", action="store_true",
                   help="have the node send the bytes through the connection even when it runs on this machine")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = command("ls", "list checkpoints and their versions",
                "List the live versions of every checkpoint, or of NAME.",
                "examples:\n  peerstore ls\n  peerstore ls run1/step-500 --json\n", cmd_ls)
    p.add_argument("name", metavar="NAME", nargs="?", help="only this checkpoint")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("status", "show the cluster and how safe each checkpoint is now",
                "Show the members the node sees and, for every checkpoint, its tolerance now: how many "
                "more node failures it survives given where its pieces actually are.",
                "examples:\n  peerstore status\n  peerstore status --json\n", cmd_status)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("rm", "remove a checkpoint or one version",
                "Remove NAME (every version this node has seen) or NAME@V (one version).",
                "examples:\n  peerstore rm run1/step-500@2\n  peerstore rm run1/step-500\n", cmd_rm)
    p.add_argument("spec", metavar="SPEC", help="NAME or NAME@VERSION")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = command("verify", "check checkpoints end to end: every copy re-read and hashed where it lives",
                "Check SPEC (NAME, NAME@VERSION), or every checkpoint: every piece must be held where the "
                "nodes' inventories say, and every holder re-reads its copies and checks them against their "
                "BLAKE3 ids. Prints each problem (a corrupt or missing copy, a tolerance below the one "
                "reported at put, a node that did not answer) and what repair will do about it. A corrupt "
                "copy is moved to its node's quarantine and re-created from the other copies, as scrub "
                "would; run verify again to confirm. Exit code 0 when all is well, 1 when not.",
                "examples:\n  peerstore verify\n  peerstore verify run1/step-500@3 --json\n", cmd_verify)
    p.add_argument("spec", metavar="SPEC", nargs="?", help="NAME or NAME@VERSION (default: every checkpoint)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command("watch", "store every finished checkpoint written into a directory",
                "Watch DIR and store each checkpoint written into it through this machine's node as soon\n"
                "as it is finished: exactly once, never a partial one. Finished means complete by its\n"
                "format (safetensors structure, trainer_state.json of a Hugging Face checkpoint-N/, the\n"
                ".metadata of a PyTorch DCP directory, DeepSpeed's latest pointer, the end record of a\n"
                "torch .pt/.bin zip) and unchanged for the settle time (on Linux also: no writer holds a\n"
                "file open). Names come from paths: DIR/llama/checkpoint-500/ is llama/checkpoint-500.\n"
                "Details: docs/watcher.md. Runs until Ctrl-C; with --once it stores what is finished and\n"
                "exits. A node watches its config's watch.paths by itself; this is for one-off use.",
                "examples:\n  peerstore watch runs/\n  peerstore watch runs/ --once\n"
                "  peerstore watch runs/llama --name-prefix pi4/ --include 'checkpoint-*'\n"
                "  peerstore watch out/ --exclude '*-tmp' --settle 30\n\n"
                "--once exits 0 when everything in DIR is stored (or was already), 1 when some checkpoint\n"
                "is not finished or could not be stored (it prints which and why).\n", cmd_watch)
    p.add_argument("dir", metavar="DIR", help="directory the trainer writes checkpoints into")
    p.add_argument("--name-prefix", metavar="P", help="put P in front of every name (default: the config's "
                   "watch.name_prefix, usually empty), e.g. pi4/")
    p.add_argument("--name-template", metavar="T", help="how names are made (default {prefix}{run}/{checkpoint})")
    p.add_argument("--include", metavar="GLOB", action="append", default=[],
                   help="store only checkpoints matching GLOB (repeatable; without '/' it matches the "
                   "checkpoint's own name, e.g. 'checkpoint-*')")
    p.add_argument("--exclude", metavar="GLOB", action="append", default=[],
                   help="never store checkpoints matching GLOB (repeatable)")
    p.add_argument("--settle", metavar="SECONDS", type=_settle_seconds,
                   help="seconds a checkpoint must stay unchanged before it is stored (default: the config's "
                   "watch.settle_seconds, 5)")
    p.add_argument("--once", action="store_true",
                   help="store what is finished now, report what waits and why, and exit")

    p = command("local", "run a demo cluster of N nodes on this machine",
                "Start N nodes on 127.0.0.1 (ports BASE+1..BASE+N) with data under DATA/local, and "
                "write DATA/local/client.yaml so this CLI finds them with no flags. Reruns reuse the "
                "same data and cluster key. Ctrl-C stops every node.",
                "examples:\n  peerstore local 5\n  ./launch.sh --local 5\n"
                "  peerstore local 3 --base-port 8420 --data /tmp/ps --metrics-base-port 0\n"
                "  peerstore local 5 --set repair.grace_seconds=15 --set gc.interval_seconds=5\n"
                "  peerstore local 3 --set 'watch.paths=[\"/data/runs\"]'\n", cmd_local)
    p.add_argument("count", metavar="N", type=int, help="number of nodes (1 to 64)")
    p.add_argument("--base-port", type=_port, default=7420, help="node i listens on BASE+i (default 7420)")
    p.add_argument("--data", metavar="DIR", default="data", help="data root; the cluster lives in DIR/local (default ./data)")
    p.add_argument("--metrics-base-port", metavar="PORT", type=int, default=9420,
                   help="node i serves /metrics on PORT+i (default 9420); 0 turns metrics off")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="set a config key on every node (repeatable); VALUE is read as YAML, "
                   "e.g. --set gc.interval_seconds=5 --set 'watch.paths=[\"/data/runs\"]'")
    return parser


# ---------------------------------------------------------------------------------------
# Config and address


def resolve_config_path(explicit: str | None, *, env: dict[str, str] | None = None, cwd: Path | None = None,
                        include_local: bool = True) -> Path:
    """--config, else $PEERSTORE_CONFIG, else ./config.yaml, else ./data/local/client.yaml."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    candidates = [cwd / "config.yaml"] + ([cwd / LOCAL_CLIENT_CONFIG] if include_local else [])
    for path in candidates:
        if path.is_file():
            return path
    raise UsageError(
        f"no config file: pass --config PATH, set {CONFIG_ENV}, write ./config.yaml with 'peerstore init', "
        "or start a local cluster with 'peerstore local 5'"
    )


def default_node(config: Config) -> tuple[str, int]:
    """Where the node of this machine listens, from its config."""
    host = config.listen_host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, config.listen_port


def local_socket(args: argparse.Namespace, config: Config) -> Path | None:
    """The Unix socket of the config's own node (a put there lets it read the files
    itself), unless --node names another node."""
    if args.node is not None and tuple(args.node) != default_node(config):
        return None
    return client_socket_path(config.data_dir)


def _client(args: argparse.Namespace) -> NodeClient:
    config = load_config(resolve_config_path(args.config))
    host, port = args.node or default_node(config)
    return NodeClient(host, port, config.cluster_key, args.timeout, config_source=config.source,
                      local_socket=local_socket(args, config))


def _progress(args: argparse.Namespace) -> Progress:
    return Progress(enabled=False if args.quiet else None)


# ---------------------------------------------------------------------------------------
# Output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot encode {type(value).__name__}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; columns listed in ``right`` right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _when(created: Any) -> str:
    if not isinstance(created, (int, float)) or created <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created))


def _version_labels(entries: Sequence[dict]) -> list[str]:
    """The counter alone, or counter.node-prefix where two versions of a name share it."""
    seen: dict[tuple[Any, Any], int] = {}
    for e in entries:
        key = (e.get("name"), e.get("version"))
        seen[key] = seen.get(key, 0) + 1
    labels = []
    for e in entries:
        if seen[(e.get("name"), e.get("version"))] > 1 and isinstance(e.get("version_id"), str):
            counter, _, node = e["version_id"].partition(".")
            labels.append(f"{counter}.{node[:8]}")
        else:
            labels.append(str(e.get("version", "?")))
    return labels


def _tolerance(value: Any) -> str:
    if value == -1:
        return "LOST"
    return str(value) if value is not None else "?"


def format_listing(entries: Sequence[dict]) -> str:
    rows = [
        [str(e.get("name", "?")), label, human_size(int(e.get("size", 0))), str(e.get("files", "?")),
         _tolerance(e.get("tolerance")), _when(e.get("created"))]
        for e, label in zip(entries, _version_labels(entries))
    ]
    return format_table(["NAME", "VERSION", "SIZE", "FILES", "TOLERANCE", "CREATED"], rows, right=(2, 3, 4))


def _policy(row: dict) -> str:
    if "below_policy" not in row:
        return "-"
    if not row.get("below_policy"):
        return "ok"
    return f"BELOW (best {row.get('best_tolerance', '?')})"


def format_repair(status: dict, rows: Sequence[dict]) -> str:
    """One line on repair (docs/self-healing.md) when a checkpoint is below its policy."""
    below = [r for r in rows if r.get("below_policy")]
    repair = status.get("repair") if isinstance(status.get("repair"), dict) else {}
    if not below:
        return ""
    left = int(repair.get("bytes_left") or 0)
    rate = float(repair.get("rate") or 0)
    eta = repair.get("eta")
    head = f"{len(below)} checkpoint(s) below policy"
    if left <= 0:
        return f"{head}; repair cannot re-create what is missing with the nodes up now: bring nodes back or add some"
    if rate > 0 and isinstance(eta, (int, float)):
        return (f"{head}; repair: {human_size(left)} left at {human_size(int(rate))}/s, "
                f"about {_duration(eta)} to go")
    return (f"{head}; repair: {human_size(left)} to re-create, not running yet (it waits "
            "repair.grace_seconds after a node leaves, and needs a majority of the members)")


def format_gc(status: dict) -> str:
    """The status line on garbage collection (docs/self-healing.md): what rm, retention and
    failed puts left that is not freed yet, and why a node's collector is stuck."""
    gc = status.get("gc")
    if not isinstance(gc, dict):
        return ""
    awaiting = int(gc.get("awaiting_bytes") or 0)
    pieces = int(gc.get("awaiting_pieces") or 0)
    line = f"bytes awaiting GC: {human_size(awaiting)}"
    if pieces:
        line += f" ({pieces} piece(s); freed within gc.interval_seconds)"
    blocked = gc.get("blocked") if isinstance(gc.get("blocked"), dict) else {}
    for node, why in sorted(blocked.items()):
        line += f"\n  GC on node {node} is waiting: {why}"
    return line


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def _incarnation(m: dict) -> str:
    """A member's incarnation as a person reads it: its boot count, and the refutations
    (sequence) within that boot (core/membership.py: each boot starts at boot << 32; a
    node older than the "boot" field is read the same way)."""
    incarnation = m.get("incarnation")
    boot, seq = m.get("boot"), m.get("seq")
    if not (type(boot) is int and type(seq) is int):
        if type(incarnation) is not int or incarnation < 0:
            return "-"
        # Only here: core.membership pulls in the core's events, which get, put and ls do not need.
        from peerstore.core.membership import INCARNATION_BITS_PER_BOOT

        boot, seq = incarnation >> INCARNATION_BITS_PER_BOOT, incarnation & ((1 << INCARNATION_BITS_PER_BOOT) - 1)
    return f"boot {boot}, seq {seq}"


def _named(node: Any, names: dict[str, str]) -> str:
    node = str(node)
    return f"{node} ({names[node]})" if names.get(node) else node


def format_unanswered(status: dict, names: dict[str, str]) -> list[str]:
    """The members a status could not ask within its time limit (core/status.py)."""
    out = []
    for item in status.get("unanswered") or []:
        if not isinstance(item, dict):
            continue
        why = "unreachable" if item.get("why") == "unreachable" else "no answer within the status time limit"
        out.append(f"NOT ASKED: node {_named(item.get('id', '?'), names)}: {why}; its report is missing and "
                   "its pieces are not counted, so TOLERANCE NOW may read lower than it is")
    return out


def format_status(status: dict, where: str) -> str:
    members = [m if isinstance(m, dict) else {"id": str(m)} for m in status.get("members") or []]
    names = {str(m.get("id")): str(m["name"]) for m in members if m.get("name")}
    lines = [f"node {_named(status.get('node_id', '?'), names)} (via {where}); {len(members)} member(s) in view"]
    if members:
        rows = []
        for m in members:
            node = str(m.get("id") or m.get("node_id") or "?") + (" (this node)" if m.get("self") else "")
            contact = m.get("last_contact")
            rows.append([node, str(m.get("name") or "-"), str(m.get("address") or m.get("addr") or "-"),
                         str(m.get("state") or "-"), _incarnation(m),
                         f"{contact:g} s ago" if isinstance(contact, (int, float)) and not m.get("self") else "-"])
        lines += ["", format_table(["NODE", "NAME", "ADDRESS", "STATE", "INCARNATION", "LAST CONTACT"], rows)]
    unanswered = format_unanswered(status, names)
    if unanswered:
        lines += ["", *unanswered]
    checkpoints = status.get("checkpoints") or []
    if checkpoints:
        rows = []
        entries = [c for c in checkpoints if isinstance(c, dict)]
        for c, label in zip(entries, _version_labels(entries)):
            now = c.get("tolerance_now", c.get("tolerance"))
            rows.append([str(c.get("name", "?")), label, human_size(int(c.get("size", 0))),
                         _tolerance(now), str(c.get("pieces", "?")), _policy(c)])
        lines += ["", format_table(["CHECKPOINT", "VERSION", "SIZE", "TOLERANCE NOW", "PIECES", "POLICY"], rows,
                                   right=(2, 3, 4))]
        repair = format_repair(status, entries)
        if repair:
            lines += ["", repair]
        lost = [c for c in entries if c.get("tolerance_now", c.get("tolerance")) == -1]
        if lost:
            lines.append(f"\n{len(lost)} checkpoint(s) cannot be restored with the nodes up now "
                         "(TOLERANCE NOW = LOST); bring the missing nodes back")
    else:
        lines += ["", "no checkpoints stored"]
    gc = format_gc(status)
    if gc:
        lines += ["", gc]
    scrub = format_scrub(status.get("nodes") or [])
    if scrub:
        lines += ["", *scrub]
    read_only = status.get("read_only") if isinstance(status.get("read_only"), dict) else {}
    for node, why in sorted(read_only.items()):
        lines.append(f"\nDISK READ-ONLY on node {node}: it takes no pieces until its disk is writable again "
                     f"(check it, repair or replace it): {why}")
    watch = status.get("watch")
    if isinstance(watch, dict):
        lines += ["", *format_watch(watch)]
    conflicts = [c for c in status.get("conflicts") or [] if isinstance(c, list)]
    for same in conflicts:
        claims = [e for e in same if isinstance(e, dict)]
        first = claims[0] if claims else {}
        ids = ", ".join(str(e.get("manifest_id", "?"))[:16] for e in claims)
        version = first.get("version_id", first.get("version", "?"))
        lines.append(f"\nCORRUPTION: version {version} of {first.get('name', '?')} is claimed by {len(claims)} "
                     f"different checkpoints (manifests {ids}); both are kept, neither is served by that "
                     "version; report it with the node logs")
    return "\n".join(lines)


def format_watch(watch: dict) -> list[str]:
    """The watcher's part of `peerstore status`: directories, pending and why, last stored."""
    dirs = [str(d) for d in watch.get("dirs") or []]
    missing = {str(d) for d in watch.get("missing") or []}
    shown = [d + (" (missing: watched once it exists)" if d in missing else "") for d in dirs]
    lines = [f"watching {', '.join(shown) or 'nothing'}"]
    last, when = watch.get("last_stored"), watch.get("last_success")
    if last:
        lines.append(f"last stored: {last} at {_when(when)}")
    else:
        lines.append("last stored: nothing yet")
    failures = {k: v for k, v in (watch.get("failures") or {}).items() if v}
    if failures:
        lines.append("store failures since start: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    pending = [p for p in watch.get("pending") or [] if isinstance(p, dict)]
    count = watch.get("pending_count", len(pending))
    if pending:
        rows = [[str(p.get("name", "?")), str(p.get("state", "?")), _seconds_text(p.get("waiting_seconds")),
                 str(p.get("reason", ""))] for p in pending]
        lines += ["", format_table(["PENDING", "STATE", "WAITING", "WHY"], rows, right=(2,))]
        if isinstance(count, int) and count > len(pending):
            lines.append(f"... and {count - len(pending)} more")
    else:
        lines.append("no checkpoints pending")
    return lines


def _seconds_text(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:.1f} MB/s" if seconds > 0 else "-"


# ---------------------------------------------------------------------------------------
# Commands


def cmd_node(args: argparse.Namespace) -> int:
    config = load_config(resolve_config_path(args.config, include_local=False))
    if args.log_format or args.log_file:
        config = dataclasses.replace(config, log=dataclasses.replace(
            config.log, **({"format": args.log_format} if args.log_format else {}),
            **({"file": Path(args.log_file).expanduser().absolute()} if args.log_file else {})))
    try:
        from peerstore.shell.daemon.main import run_node
    except ImportError as err:
        if err.name and err.name.startswith("peerstore.shell.daemon"):
            raise PeerstoreError("this installation has no node daemon (peerstore.shell.daemon.main is missing)") from None
        raise
    return int(run_node(config) or 0)


def cmd_init(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if os.path.lexists(output) and not args.force:
        raise PeerstoreError(f"{output} already exists; pass --force to overwrite it (its cluster key would be lost)")
    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.listen_port:
        overrides["listen_port"] = args.listen_port
    seeds = [s.strip() for item in args.seeds for s in item.split(",") if s.strip()]
    for seed in seeds:
        try:
            parse_host_port(seed)
        except ValueError as err:
            raise UsageError(f"--seeds: {err}") from None
    if seeds:
        overrides["seeds"] = seeds
    if args.cluster_key:
        overrides["cluster_key"] = args.cluster_key.strip()
    text = render_config(**overrides)
    config = _validate_written(text, output)
    write_file_atomic(output, text.encode(), mode=0o600)  # it holds the cluster secret
    port = config.listen_port
    print(f"wrote {output} (node data in {config.data_dir})")
    if args.cluster_key:
        print("\nthis node joins the cluster with the key you gave. Start it with ./launch.sh")
        return EXIT_OK
    key = config.cluster_key.hex()
    print(f"""
This is a new cluster. Every machine needs the same cluster key (keep it secret):

  cluster_key: {key}

On each other machine, run:

  ./launch.sh peerstore init --cluster-key {key} --seeds {_this_host()}:{port}

(or copy the cluster_key line into its config.yaml; seeds are only needed where
multicast DNS does not reach). Then start every node with ./launch.sh""")
    return EXIT_OK


def _validate_written(text: str, output: Path) -> Config:
    return config_from_mapping(yaml.safe_load(text), str(output), base_dir=Path(os.path.abspath(output)).parent)


def _this_host() -> str:
    """This machine's address as other machines on the LAN likely see it."""
    from peerstore.shell.netaddr import detect_address  # only init needs it

    return detect_address()


def cmd_put(args: argparse.Namespace) -> int:
    client = _client(args)
    result = trio.run(partial(client.put, Path(args.path), args.name, _progress(args), stream=args.stream))
    if args.json:
        _print_json(result)
        return EXIT_OK
    counter = str(result.get("version", "?")).split(".")[0]
    size = int(result.get("size", 0))
    tolerance = result.get("tolerance", "?")
    print(f"stored {args.name}@{counter}: {human_size(size)}, tolerance {tolerance} "
          f"(survives {tolerance} more node failure{'s' if tolerance != 1 else ''}), "
          f"{_rate(size, result.get('seconds', 0))}")
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    name, _ = parse_spec(args.spec)
    out = Path(args.out) if args.out else Path(name.rsplit("/", 1)[-1])
    client = _client(args)
    into_dir = bool(args.out) and args.out.endswith(("/", os.sep))
    result = trio.run(partial(client.get, args.spec, out, force=args.force, progress=_progress(args),
                              into_dir=into_dir, stream=args.stream))
    if args.json:
        _print_json(result)
        return EXIT_OK
    notes = []
    if result.get("degraded"):
        notes.append(f"{result['degraded']} stripe(s) rebuilt from parity")
    if result.get("fallbacks"):
        notes.append(f"{result['fallbacks']} piece(s) from a second replica")
    counter = str(result.get("version", "?")).split(".")[0]
    print(f"restored {name}@{counter} to {result['path']}: {human_size(result['bytes'])} in "
          f"{result['files']} file{'s' if result['files'] != 1 else ''}, verified, "
          f"{_rate(result['bytes'], result.get('seconds', 0))}" + (f" ({'; '.join(notes)})" if notes else ""))
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    client = _client(args)
    entries = trio.run(client.ls, args.name)
    if args.name and not entries:
        raise NotFoundError(f"no checkpoint named {args.name} (see 'peerstore ls')")
    if args.json:
        _print_json(entries)
    elif not entries:
        print("no checkpoints stored yet (store one with 'peerstore put PATH --name NAME')")
    else:
        print(format_listing(entries))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    status = trio.run(client.status)
    if args.json:
        _print_json(status)
    else:
        print(format_status(status, client.where))
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    parse_spec(args.spec)
    client = _client(args)
    result = trio.run(client.rm, args.spec)
    if args.json:
        _print_json(result)
        return EXIT_OK
    name = args.spec.split("@", 1)[0]
    versions = [str(v) for v in result.get("versions", [])]
    print(f"removed {', '.join(f'{name}@{v}' for v in versions) or 'nothing'}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    if args.spec is not None:
        parse_spec(args.spec)
    client = _client(args)
    report = trio.run(partial(client.verify, args.spec, _progress(args)))
    if args.json:
        _print_json(report)
    else:
        print(format_verify_report(report, client.where))
    return verify_exit_code(report)


def cmd_watch(args: argparse.Namespace) -> int:
    from peerstore.cli.watch_command import build_watcher, format_once_report, once_exit_code, setup_logging

    config = load_config(resolve_config_path(args.config))
    host, port = args.node or default_node(config)
    watcher = build_watcher(
        config, Path(args.dir),
        lambda: NodeClient(host, port, config.cluster_key, args.timeout, config_source=config.source,
                           local_socket=local_socket(args, config)),
        name_prefix=args.name_prefix, name_template=args.name_template, include=args.include,
        exclude=args.exclude, settle=args.settle,
    )
    setup_logging(args.quiet)
    if not args.quiet:
        print(f"watching {watcher.roots[0]}, storing through {where_of(host, port)} "
              f"(settle {watcher.settings.settle_seconds:g} s){'' if args.once else '; Ctrl-C stops'}",
              file=sys.stderr)
    report = trio.run(partial(watcher.run, once=args.once))
    if args.once:
        print(format_once_report(report))
        return once_exit_code(report)
    return EXIT_OK


def cmd_local(args: argparse.Namespace) -> int:
    from peerstore.cli.local_cluster import run_local
    from peerstore.cli.overrides import parse_overrides

    return run_local(args.count, base_port=args.base_port, data=Path(args.data),
                     metrics_base_port=args.metrics_base_port, overrides=parse_overrides(args.overrides))


# ---------------------------------------------------------------------------------------
# Entry point


def exit_code_for(err: BaseException) -> int:
    """The exit code a deliberate error maps to."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, (UsageError, ConfigError, InvalidNameError)):
        return EXIT_USAGE
    if isinstance(err, OutcomeUnknownError):
        return EXIT_UNKNOWN
    if isinstance(err, NotFoundError):
        return EXIT_NOT_FOUND
    return EXIT_FAILED


def _deliberate(err: BaseException) -> BaseException | None:
    """The error to report for ``err``: itself, or the one that matters inside a trio
    exception group; None when it is a bug (to be re-raised with its traceback)."""
    if isinstance(err, BaseExceptionGroup):
        leaves = [leaf for sub in err.exceptions if (leaf := _deliberate(sub)) is not None]
        for leaf in leaves:
            if isinstance(leaf, KeyboardInterrupt):
                return leaf
        if leaves and len(leaves) == len(err.exceptions):
            return leaves[0]
        return None
    if isinstance(err, (PeerstoreError, KeyboardInterrupt)):
        return err
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the peerstore command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error argparse already printed (2)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    try:
        return args.func(args)
    except BaseException as err:
        cause = _deliberate(err)
        if cause is None:
            raise
        if isinstance(cause, KeyboardInterrupt):
            print("\npeerstore: interrupted", file=sys.stderr)
            if args.command == "put":
                print(f"peerstore: the put may have committed just before; check with 'peerstore ls {args.name}'",
                      file=sys.stderr)
        else:
            print(f"peerstore: {cause}", file=sys.stderr)
        return exit_code_for(cause)


if __name__ == "__main__":
    sys.exit(main())
