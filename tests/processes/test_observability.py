"""The observability bundle in deploy/, checked with the real Prometheus tools.

promtool, amtool and prometheus come from Debian's packages; CI must install them:

    apt-get install -y prometheus prometheus-alertmanager

Without them the tests that need them skip and say so; the rest (metric names, dashboard
and log-pipeline consistency) always run.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from peerstore.shell.daemon.metrics import ERROR_KINDS, Metrics
from tests.support.paths import REPO

pytestmark = pytest.mark.needs_real  # in CI as root, a missing tool fails the run (tests/conftest.py)

DEPLOY = REPO / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DEPLOY / "prometheus" / "alerts_test.yml"
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "peerstore.json"
DATASOURCES_YML = DEPLOY / "grafana" / "provisioning" / "datasources" / "peerstore.yml"
DASHBOARD_PROVIDER_YML = DEPLOY / "grafana" / "provisioning" / "dashboards" / "peerstore.yml"
PROMTAIL_YML = DEPLOY / "promtail" / "promtail.yml"
COMPOSE_YML = DEPLOY / "docker-compose.yml"

INSTALL_HINT = "CI must run `apt-get install -y prometheus prometheus-alertmanager` (see .ci/run)"
TOOL_SECONDS = 30          # any single promtool/amtool run
SCRAPE_DEADLINE = 30.0     # until the real Prometheus has scraped the endpoint and evaluated rules
SEVERITIES = {"critical", "warning"}


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"`{binary}` is not installed; {INSTALL_HINT}")
    return path


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_SECONDS, cwd=REPO)


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def recorded_names() -> set[str]:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def dashboard_targets(datasource_type: str) -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])
            if t["datasource"]["type"] == datasource_type]


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus would receive it with "All" nodes selected."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


# -- static checks with the real tools ---------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ("check", "config", str(PROMETHEUS_YML)),
    ("check", "rules", str(ALERTS_YML)),
    ("test", "rules", str(ALERTS_TEST_YML)),
], ids=["check-config", "check-rules", "alert-unit-tests"])
def test_promtool_accepts_the_bundle(argv):
    result = run_tool(need("promtool"), *argv)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_config():
    result = run_tool(need("amtool"), "check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr


def routed_receiver(labels: dict[str, str]) -> str:
    argv = [need("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
            *(f"{k}={v}" for k, v in labels.items())]
    result = run_tool(*argv)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("name", sorted(alert_rules()))
def test_every_alert_routes_to_the_receiver_for_its_severity(name):
    rule = alert_rules()[name]
    labels = {"alertname": name, "cluster": "peerstore", "job": "peerstore", **rule["labels"]}
    assert routed_receiver(labels) == f"peerstore-{rule['labels']['severity']}"


def test_an_alert_without_severity_still_reaches_someone():
    assert routed_receiver({"alertname": "SomethingElse"}) == "peerstore-warning"


# -- the rules and their tests are complete ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(alert_rules()))
def test_every_alert_says_how_bad_what_and_what_to_do(name):
    rule = alert_rules()[name]
    assert rule["labels"].get("severity") in SEVERITIES
    for key in ("summary", "description", "runbook"):
        assert len(rule["annotations"].get(key, "").strip()) >= 20, f"{name} needs a useful {key}"


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet():
    fired, quiet = set(), set()
    for test in yaml.safe_load(ALERTS_TEST_YML.read_text())["tests"]:
        for check in test["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alert_rules())
    assert names - fired == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    assert (fired | quiet) - names == set(), "tests of alerts that do not exist"


def exported_sample_names() -> set[str]:
    """Every sample name a node exports once each kind of value has been seen."""
    metrics = Metrics()
    metrics.bytes_sent.labels("p").inc()
    metrics.bytes_received.labels("p").inc()
    metrics.pieces_sent.labels("p").inc()
    metrics.pieces_received.labels("p").inc()
    metrics.transfer_seconds.observe(0.1)
    metrics.snapshot.snapshot = {"pieces": 1, "bytes": 1, "buffered": 0, "members": {"alive": 1},
                                 "tolerance": {1: 1}, "min_tolerance": 1, "core": {"piece_retries": 1},
                                 "disk": {"free": 1, "total": 2}}
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_rules_and_dashboard_use_only_metrics_a_node_exports(source):
    if source == "alerts":
        groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
        text = "\n".join(rule["expr"] for group in groups for rule in group["rules"])
    else:
        text = "\n".join(dashboard_targets("prometheus"))
    used = set(re.findall(r"\bpeerstore_[a-z0-9_]+", text))
    assert used, f"no peerstore metric found in the {source}"
    assert used - exported_sample_names() == set()
    used_records = set(re.findall(r"\bpeerstore:[a-z0-9_:]+", text))
    assert used_records - recorded_names() == set()


def test_every_error_kind_the_daemon_counts_is_exported_from_the_start():
    counted = {kind for path in (REPO / "peerstore" / "shell" / "daemon").glob("*.py")
               for kind in re.findall(r'errors\.labels\("(\w+)"\)', path.read_text())}
    assert counted, "found no errors.labels(...) calls in peerstore/daemon"
    assert counted - set(ERROR_KINDS) == set(), "add these to ERROR_KINDS so alerts see their first increase"


# -- grafana, loki, compose --------------------------------------------------------------------------

def test_dashboard_datasources_are_the_provisioned_ones():
    provisioned = {d["uid"]: d["type"] for d in yaml.safe_load(DATASOURCES_YML.read_text())["datasources"]}
    variables = {v["name"]: v for v in dashboard()["templating"]["list"] if v["type"] == "datasource"}
    for name, variable in variables.items():
        assert provisioned.get(variable["current"]["value"]) == variable["query"], name
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"].strip("${}") in variables, panel["title"]


def test_dashboard_layout_is_well_formed():
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] == "row" or panel["targets"], f"{panel['title']} shows nothing"
    kinds = {p["type"] for p in panels}
    assert {"heatmap", "logs", "timeseries", "stat"} <= kinds


def test_shipped_targets_are_the_metrics_ports_of_a_five_node_local_cluster():
    local_cluster = pytest.importorskip("peerstore.cli.local_cluster")
    expected = {f"127.0.0.1:{node.metrics_port}" for node in local_cluster.plan_cluster(5)}
    groups = json.loads((DEPLOY / "prometheus" / "targets.json").read_text())
    assert {target for group in groups for target in group["targets"]} == expected


def test_compose_mounts_exist_and_match_the_dashboard_provider():
    services = yaml.safe_load(COMPOSE_YML.read_text())["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    provider_path = yaml.safe_load(DASHBOARD_PROVIDER_YML.read_text())["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{provider_path}:ro" in services["grafana"]["volumes"]


def daemon_log_lines() -> list[str]:
    """What the daemon really writes to stderr, made by its own logging setup."""
    code = textwrap.dedent("""
        import logging
        from peerstore.shell.daemon.main import setup_logging
        setup_logging("info")
        logging.getLogger("peerstore.node").warning("cluster_key is the example key")
        try:
            raise OSError("disk on fire")
        except OSError:
            logging.getLogger("peerstore.shell.daemon.node").exception("store failed")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TOOL_SECONDS)
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def promtail_stages(job: str) -> list[dict]:
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMTAIL_YML.read_text())["scrape_configs"]}
    return jobs[job]["pipeline_stages"]


@pytest.mark.parametrize("job", ["peerstore-local", "peerstore-journal"])
def test_promtail_parses_the_daemons_real_log_format(job):
    stages = promtail_stages(job)
    line_regexes = [s["regex"]["expression"] for s in stages if "regex" in s and "source" not in s["regex"]]
    assert line_regexes
    lines = daemon_log_lines()
    first, traceback_lines = lines[0], [line for line in lines if not line[:1].isdigit()]
    match = re.search(line_regexes[0], first)
    assert match and match["level"] == "WARNING" and match["logger"] == "peerstore.node"
    assert traceback_lines, "expected a traceback continuation line"
    for stage in stages:
        if "multiline" in stage:
            start = re.compile(stage["multiline"]["firstline"])
            assert start.search(first) and not any(start.search(line) for line in traceback_lines)


def test_promtail_finds_local_cluster_logs_and_names_the_node():
    stages = promtail_stages("peerstore-local")
    by_filename = next(s["regex"]["expression"] for s in stages if s.get("regex", {}).get("source") == "filename")
    match = re.search(by_filename, "/home/me/peerstore/data/local/node-3/node.log")
    assert match and match["node"] == "node-3"
    job = next(j for j in yaml.safe_load(PROMTAIL_YML.read_text())["scrape_configs"] if j["job_name"] == "peerstore-local")
    assert job["static_configs"][0]["labels"]["__path__"].endswith("/node-*/node.log")


# -- a real Prometheus scrapes a real peerstore metrics endpoint -------------------------------------

ENDPOINT = textwrap.dedent("""
    import sys
    from peerstore.shell.daemon.metrics import ERROR_KINDS, Metrics

    metrics = Metrics()
    metrics.snapshot.snapshot = {
        "pieces": 42, "bytes": 42 * 4096, "buffered": 8192,
        "members": {"alive": 3, "dead": 1}, "tolerance": {0: 1, 2: 5}, "min_tolerance": 1,
        "core": {"stripes_rebuilt_from_parity": 1, "gossip_probes_sent": 7},
    }
    metrics.bytes_sent.labels("node-b").inc(4096)
    for seconds in (0.004, 0.03, 0.2):
        metrics.transfer_seconds.observe(seconds)
    metrics.serve("127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    for line in sys.stdin:  # one error kind per line; stdin closed: exit
        metrics.errors.labels(line.strip()).inc(2)
        print("counted", flush=True)
""")

EXPECTED_SAMPLES = [
    ("peerstore_pieces_stored", 42),
    ("peerstore_stored_bytes", 42 * 4096),
    ("peerstore_buffered_bytes", 8192),
    ('peerstore_members{state="alive"}', 3),
    ('peerstore_members{state="dead"}', 1),
    ('peerstore_members{state="suspect"}', 0),
    ('peerstore_checkpoints{tolerance="0"}', 1),
    ('peerstore_checkpoints{tolerance="2"}', 5),
    ("peerstore_checkpoints_at_risk", 1),
    ("peerstore_checkpoints_lowest_tolerance", 0),
    ("peerstore_policy_min_tolerance", 1),
    ('peerstore_bytes_sent_total{peer="node-b"}', 4096),
    ("peerstore_piece_send_seconds_count", 3),
    ('peerstore_piece_send_seconds_bucket{le="0.05"}', 2),
    ('peerstore_core_events_total{kind="stripes_rebuilt_from_parity"}', 1),
    ('peerstore_core_events_total{kind="corrupt_pieces_fetched"}', 0),
    ('peerstore_errors_total{kind="auth"}', 0),
    ('peerstore_operations_total{kind="put",outcome="failed"}', 0),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for(what: str, probe, deadline: float, logs: Path):
    """Poll probe() until it returns something truthy; fail with Prometheus' log if it never does."""
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except OSError as err:  # Prometheus still starting
            last_error = err
        time.sleep(0.25)
    pytest.fail(f"{what} within {SCRAPE_DEADLINE}s (last error: {last_error}); prometheus log:\n"
                + logs.read_text()[-3000:])


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_real_prometheus_scrapes_a_node_endpoint_and_fires_its_alerts(tmp_path):
    prometheus = need("prometheus")
    metrics_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS_YML)],
        "scrape_configs": [{"job_name": "peerstore",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    logs = tmp_path / "prometheus.log"
    endpoint = subprocess.Popen([sys.executable, "-c", ENDPOINT, str(metrics_port)], cwd=REPO, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    server = None
    try:
        assert endpoint.stdout.readline().strip() == "ready"
        with logs.open("w") as log_file:
            server = subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SCRAPE_DEADLINE

        def scraped():
            return api(prometheus_port, "query", query="peerstore_pieces_stored")["data"]["result"]
        wait_for("Prometheus did not scrape peerstore_pieces_stored", scraped, deadline, logs)

        for query, expected in EXPECTED_SAMPLES:
            result = api(prometheus_port, "query", query=query)["data"]["result"]
            assert [float(r["value"][1]) for r in result] == [expected], query

        # The first disk-full error after start must alert: the series exists at 0 beforehand.
        endpoint.stdin.write("disk_full\n")
        endpoint.stdin.flush()
        assert endpoint.stdout.readline().strip() == "counted"

        def alert_states():
            alerts = api(prometheus_port, "alerts")["data"]["alerts"]
            states = {a["labels"]["alertname"]: a["state"] for a in alerts}
            return states if states.get("PeerstoreDiskFull") == "firing" else None
        states = wait_for("PeerstoreDiskFull did not fire", alert_states, deadline, logs)
        # Tolerance 0 and a dead member: both critical alerts are on their way (for: 1m/2m).
        assert states.get("PeerstoreCheckpointAtRisk") in ("pending", "firing")
        assert states.get("PeerstoreToleranceExhausted") in ("pending", "firing")
        assert "PeerstoreDegradedReads" not in states  # its counter did not move while watched

        loaded = {r["name"] for g in api(prometheus_port, "rules")["data"]["groups"] for r in g["rules"]}
        assert set(alert_rules()) | recorded_names() <= loaded

        for expr in dashboard_targets("prometheus"):
            reply = api(prometheus_port, "query", query=grafana_to_promql(expr))
            assert reply["status"] == "success", expr
    finally:
        if server is not None:
            stop(server)
        endpoint.stdin.close()
        stop(endpoint)
