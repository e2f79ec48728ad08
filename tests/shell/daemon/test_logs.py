"""The daemon's logs (peerstore/shell/logs.py): JSON lines with their fields, size rotation
bounded in count, the config's `log:` section and its CLI overrides, and the Promtail
pipeline in deploy/promtail reading what the daemon writes where it writes it."""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import plistlib
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from peerstore.cli.commands import main
from peerstore.cli.service import launchd_log_dir, render_launchd
from peerstore.errors import ConfigError
from peerstore.shell import logs
from peerstore.shell.config import config_from_mapping
from peerstore.shell.daemon import main as daemon_main
from tests.support.paths import REPO

KEY = "ef" * 32
PROMTAIL_YML = REPO / "deploy" / "promtail" / "promtail.yml"


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logs._context.clear()


def json_line(record_args: dict, **extra) -> dict:
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream, node_name="pi4")
    logs.set_context(node_id="ab12cd34ef567890")
    logger = logging.getLogger(record_args.get("logger", "peerstore.test"))
    if record_args.get("exc"):
        try:
            raise OSError(5, "Input/output error")
        except OSError:
            logger.exception(record_args["msg"], extra=extra)
    else:
        logger.warning(record_args["msg"], extra=extra)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines  # one record, one line, even with a traceback
    return json.loads(lines[0])


def test_json_line_has_the_fields_and_the_extras():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    line = json_line({"msg": "stored run1/x"}, checkpoint="run1/x", peer="cd34", event="put_committed",
                     size=42, key=b"\x01\x02", level="DEBUG")
    assert line["level"] == "WARNING"  # an extra never overwrites a fixed field
    assert line["logger"] == "peerstore.test" and line["msg"] == "stored run1/x"
    assert line["node_id"] == "ab12cd34ef567890" and line["node_name"] == "pi4"
    assert (line["checkpoint"], line["peer"], line["event"], line["size"], line["key"]) == \
        ("run1/x", "cd34", "put_committed", 42, "0102")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    ts = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert before <= ts <= datetime.now(timezone.utc)


def test_json_line_carries_the_traceback_in_one_field():
    line = json_line({"msg": "store failed", "exc": True})
    assert "Traceback" in line["exc"] and "Input/output error" in line["exc"]


def test_huge_messages_are_clipped():
    line = json_line({"msg": "x" * (3 * logs.MAX_FIELD_CHARS)})
    assert len(line["msg"]) < logs.MAX_FIELD_CHARS + 100 and line["msg"].endswith("(truncated)")


def test_text_to_stderr_keeps_the_format_promtail_and_local_read():
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    logging.getLogger("peerstore.node").warning("hello")
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING peerstore\.node: hello\n", stream.getvalue())


def read_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_rotates_at_max_bytes_and_keeps_only_backups(tmp_path):
    path = tmp_path / "logs" / "node.log"  # the directory is created
    logs.configure("info", "json", path, max_bytes=1024, backups=2)
    for i in range(300):
        logging.getLogger("peerstore.test").info("record %d", i, extra={"event": "tick"})
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2"]
    for name in files:
        f = path.parent / name
        assert f.stat().st_size <= 1024  # rotated before a record would cross the limit
        assert all(line["event"] == "tick" for line in read_json_lines(f))
    assert read_json_lines(path)[-1]["msg"] == "record 299"


def test_configure_replaces_its_own_handler_only(tmp_path):
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    first = logs.configure("info", "text", tmp_path / "a.log")
    second = logs.configure("info", "json", tmp_path / "b.log")
    handlers = logging.getLogger().handlers
    assert second in handlers and first not in handlers and other in handlers
    logging.getLogger().removeHandler(other)


# -- config and command line ------------------------------------------------------------------------

def load(log: dict | None):
    data = {"data_dir": "/srv/peerstore", "cluster_key": KEY}
    if log is not None:
        data["log"] = log
    return config_from_mapping(data, "c.yaml", Path("/cfg"))


def test_log_section_defaults_and_values():
    assert load(None).log == logs_settings(None, "text", 10 * 1024 * 1024, 5)
    config = load({"file": "logs/node.log", "format": "json", "max_bytes": "1MiB", "backups": 3})
    assert config.log == logs_settings(Path("/cfg/logs/node.log"), "json", 1024 * 1024, 3)


def logs_settings(file, fmt, max_bytes, backups):
    from peerstore.shell.config import LogSettings
    return LogSettings(file=file, format=fmt, max_bytes=max_bytes, backups=backups)


@pytest.mark.parametrize("log,key,words", [
    ({"format": "xml"}, "log.format", "text, json"),
    ({"backups": 0}, "log.backups", "from 1 to 100"),
    ({"max_bytes": 100}, "log.max_bytes", "size from 1KiB"),
    ({"rotate": True}, "log.rotate", "unknown key"),
])
def test_bad_log_values_name_the_key(log, key, words):
    with pytest.raises(ConfigError) as err:
        load(log)
    assert key in str(err.value) and words in str(err.value)


def test_a_log_file_that_cannot_be_written_is_a_config_error_naming_the_key(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = load({"file": str(blocker / "node.log")})
    with pytest.raises(ConfigError) as err:
        daemon_main.setup_logging("info", config)
    assert "log.file" in str(err.value) and "log.file: null" in str(err.value)


def test_node_flags_override_the_config(tmp_path, monkeypatch):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"data_dir": "d", "cluster_key": KEY, "log": {"format": "text"}}))
    seen = []
    monkeypatch.setattr(daemon_main, "run_node", lambda config: seen.append(config) or 0)
    monkeypatch.chdir(tmp_path)
    assert main(["node", "--config", str(config_path), "--log-format", "json", "--log-file", "x/node.log"]) == 0
    assert seen[0].log.format == "json" and seen[0].log.file == tmp_path / "x" / "node.log"
    assert main(["node", "--config", str(config_path)]) == 0
    assert seen[1].log.format == "text" and seen[1].log.file is None


# -- Promtail reads it ----------------------------------------------------------------------------

def promtail_jobs() -> dict[str, dict]:
    return {j["job_name"]: j for j in yaml.safe_load(PROMTAIL_YML.read_text())["scrape_configs"]}


def expand_env(text: str, env: dict[str, str]) -> str:
    """Promtail's -config.expand-env: ${VAR} and ${VAR:-default}."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1], m[2] or ""), text)


def test_the_file_job_reads_the_file_the_launchd_service_writes(tmp_path):
    home = tmp_path / "home"
    plist = render_launchd(executable=Path("/bin/true"), config=Path("/c.yaml"), data_dir=Path("/d"),
                           log_dir=launchd_log_dir(home), run_as=None)
    args = plistlib.loads(plist.encode())["ProgramArguments"]
    log_file = args[args.index("--log-file") + 1]
    path = promtail_jobs()["peerstore-file"]["static_configs"][0]["labels"]["__path__"]
    assert expand_env(path, {"PEERSTORE_LOG_DIR": str(launchd_log_dir(home))}) == log_file
    assert expand_env(path, {}) == "/var/log/peerstore/node.log"
    assert not fnmatch.fnmatch(log_file + ".1", expand_env(path, {"PEERSTORE_LOG_DIR": str(launchd_log_dir(home))}))


def stage(job: str, kind: str) -> list[dict]:
    return [s[kind] for s in promtail_jobs()[job]["pipeline_stages"] if kind in s]


@pytest.mark.parametrize("job", ["peerstore-file", "peerstore-journal", "peerstore-local"])
def test_json_stages_pick_fields_the_daemon_writes_and_label_them(job):
    line = json_line({"msg": "hello"}, **logs.fields("put_done", "run1/x@3.ab12cd34ef567890", peer="cd" * 8))
    (expressions,) = [s["expressions"] for s in stage(job, "json")]
    assert {"level", "logger", "event", "checkpoint", "peer"} <= set(expressions)
    for name, source in expressions.items():
        assert source in line, f"{job}: {name} reads {source!r}, which the daemon does not write"
    labels = set().union(*(s for s in stage(job, "labels")))
    assert {"level", "logger", "node", "event"} <= labels
    assert not labels & {"checkpoint", "peer", "node_id", "op"}  # one stream per value would swamp Loki
    if job != "peerstore-local":  # there the node label comes from the file's directory
        assert expressions["node"] == "node_name" and line["node_name"] == "pi4"


def test_file_job_splits_records_of_both_formats_and_keeps_tracebacks(tmp_path):
    path = tmp_path / "node.log"
    logs.configure("info", "text", path)
    log = logging.getLogger("peerstore.node")
    log.warning("disk low")
    try:
        raise OSError("disk on fire")
    except OSError:
        log.exception("store failed")
    logs.configure("info", "json", path)
    log.info("json now")
    lines = path.read_text().splitlines()
    (multiline,) = stage("peerstore-file", "multiline")
    first = re.compile(multiline["firstline"])
    starts = [line for line in lines if first.search(line)]
    assert len(starts) == 3 and starts[2].startswith("{")
    (regex,) = [s["expression"] for s in stage("peerstore-file", "regex")]
    match = re.search(regex, starts[0])
    assert match and match["level"] == "WARNING" and match["logger"] == "peerstore.node"
    (timestamp,) = stage("peerstore-file", "timestamp")
    assert timestamp["source"] == "ts" and timestamp["format"] == "RFC3339Nano"


def test_journal_job_keeps_system_and_user_units_named_peerstore():
    (keep,) = [r for r in promtail_jobs()["peerstore-journal"]["relabel_configs"] if r.get("action") == "keep"]
    sep = keep.get("separator", ";")

    def kept(unit: str, user_unit: str) -> bool:
        return re.fullmatch(keep["regex"], sep.join([unit, user_unit])) is not None  # Prometheus anchors it

    assert kept("peerstore.service", "") and kept("user@1000.service", "peerstore.service")
    assert not kept("sshd.service", "") and not kept("user@1000.service", "pipewire.service")

