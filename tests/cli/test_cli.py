"""The peerstore command line: arguments, config resolution, output and exit codes."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from peerstore.cli import commands as cli
from peerstore.shell.config import load_config, render_config
from peerstore.errors import UsageError
from tests.support.fake_node import KEY, FakeNode, random_bytes, snapshot, write_tree


@pytest.fixture
def node():
    fake = FakeNode()
    with fake.running():
        yield fake


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cli.CONFIG_ENV, raising=False)
    return tmp_path


@pytest.fixture
def config(workdir, node) -> Path:
    path = workdir / "config.yaml"
    path.write_text(render_config(data_dir="d", cluster_key=KEY.hex(), listen_host="127.0.0.1",
                                  listen_port=node.port))
    return path


def peerstore(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- arguments


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["put", "x"],                      # --name is required
        ["get"],
        ["--timeout", "-1", "ls"],
        ["--timeout", "soon", "ls"],
        ["--node", "nohost", "ls"],
        ["ls", "--node", "[zz]:1"],
        ["local", "three"],
        ["get", "-dash"],                  # argparse reads it as an option
        ["init", "--listen-port", "70000"],
    ],
)
def test_bad_arguments_exit_2(capsys, workdir, argv):
    code, out, err = peerstore(capsys, *argv)
    assert code == cli.EXIT_USAGE and "usage:" in err


@pytest.mark.parametrize("argv", [["--help"], ["put", "--help"], ["get", "--help"], ["local", "--help"]])
def test_help_exits_0_and_documents_exit_codes(capsys, argv):
    code, out, _ = peerstore(capsys, *argv)
    assert code == 0 and "exit codes:" in out and "examples:" in out


def test_global_options_work_before_and_after_the_command(workdir):
    parser = cli.build_parser()
    before = parser.parse_args(["--node", "10.0.0.5:7420", "--timeout", "5", "ls"])
    after = parser.parse_args(["ls", "--node", "10.0.0.5:7420", "--timeout", "5"])
    neither = parser.parse_args(["ls"])
    assert before.node == after.node == ("10.0.0.5", 7420)
    assert before.timeout == after.timeout == 5.0
    assert neither.node is None and neither.timeout == cli.DEFAULT_TIMEOUT and neither.config is None


@pytest.mark.parametrize(
    "argv",
    [
        ["put", "somefile", "--name", "../escape"],
        ["put", "missing-file", "--name", "ok"],
        ["get", "bad@"],
        ["rm", "a//b"],
        ["ls", "no spaces"],
        ["local", "0"],
        ["local", "2", "--base-port", "65534"],
    ],
)
def test_invalid_values_exit_2_with_one_line(capsys, config, argv):
    Path("somefile").write_text("x")
    code, _, err = peerstore(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert err.startswith("peerstore: ") and err.count("\n") == 1 and "Traceback" not in err


# -- config resolution


@pytest.mark.parametrize(
    "explicit, env, files, expected",
    [
        ("given.yaml", "env.yaml", ["config.yaml", "data/local/client.yaml"], "given.yaml"),
        (None, "env.yaml", ["config.yaml", "data/local/client.yaml"], "env.yaml"),
        (None, None, ["config.yaml", "data/local/client.yaml"], "config.yaml"),
        (None, None, ["data/local/client.yaml"], "data/local/client.yaml"),
        (None, "", ["data/local/client.yaml"], "data/local/client.yaml"),
    ],
)
def test_config_resolution_order(tmp_path, explicit, env, files, expected):
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    environ = {} if env is None else {cli.CONFIG_ENV: env}
    found = cli.resolve_config_path(explicit, env=environ, cwd=tmp_path)
    assert found == (Path(expected) if expected in (explicit, env) else tmp_path / expected)


def test_no_config_anywhere_says_what_to_do(tmp_path):
    with pytest.raises(UsageError, match="peerstore init.*peerstore local 5"):
        cli.resolve_config_path(None, env={}, cwd=tmp_path)
    (tmp_path / "data" / "local").mkdir(parents=True)
    (tmp_path / "data" / "local" / "client.yaml").write_text("")
    with pytest.raises(UsageError):  # a node never runs from the local cluster's client config
        cli.resolve_config_path(None, env={}, cwd=tmp_path, include_local=False)


def test_broken_config_exits_2_naming_file_and_key(capsys, workdir):
    Path("config.yaml").write_text(f"data_dir: d\ncluster_key: {KEY.hex()}\nlisten:\n  port: 99999\n")
    code, _, err = peerstore(capsys, "ls")
    assert code == cli.EXIT_USAGE
    assert "config.yaml: listen.port:" in err


@pytest.mark.parametrize(
    "listen_host, expected",
    [("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("127.0.0.1", "127.0.0.1"), ("10.0.0.5", "10.0.0.5")],
)
def test_default_node_address(tmp_path, listen_host, expected):
    path = tmp_path / "c.yaml"
    path.write_text(render_config(data_dir="d", cluster_key=KEY.hex(), listen_host=listen_host, listen_port=7777))
    assert cli.default_node(load_config(path)) == (expected, 7777)


# -- init


def test_init_writes_a_loadable_private_config_and_refuses_to_overwrite(capsys, workdir):
    code, out, _ = peerstore(capsys, "init", "--data-dir", "/srv/ps", "--listen-port", "7500",
                             "--seeds", "10.0.0.5:7500,10.0.0.6:7500", "--seeds", "pi4.local:7500")
    assert code == 0
    config = load_config("config.yaml")
    assert config.data_dir == Path("/srv/ps") and config.listen_port == 7500
    assert config.seeds == (("10.0.0.5", 7500), ("10.0.0.6", 7500), ("pi4.local", 7500))
    key = config.cluster_key.hex()
    assert f"cluster_key: {key}" in out and f"--cluster-key {key}" in out
    assert os.stat("config.yaml").st_mode & 0o777 == 0o600

    code, _, err = peerstore(capsys, "init")
    assert code == cli.EXIT_FAILED and "--force" in err
    assert load_config("config.yaml").cluster_key.hex() == key

    assert peerstore(capsys, "init", "--force")[0] == 0
    assert load_config("config.yaml").cluster_key.hex() != key


def test_init_joins_an_existing_cluster_with_its_key(capsys, workdir):
    key = "ab" * 32
    code, _, _ = peerstore(capsys, "init", "-o", "node2.yaml", "--cluster-key", key)
    assert code == 0 and load_config("node2.yaml").cluster_key.hex() == key


@pytest.mark.parametrize("argv", [["--seeds", "no-port"], ["--cluster-key", "abc"]])
def test_init_rejects_bad_values(capsys, workdir, argv):
    code, _, err = peerstore(capsys, "init", *argv)
    assert code == cli.EXIT_USAGE and err.startswith("peerstore: ")
    assert not Path("config.yaml").exists()


# -- talking to a node: outputs and exit codes


def test_put_ls_get_status_rm_through_the_cli(capsys, config, node):
    write_tree(Path("ckpt"), {"model.safetensors": random_bytes(200_000, 1), "state.json": b"{}"})
    code, out, err = peerstore(capsys, "put", "ckpt", "--name", "run1/step-500", "--stream")
    assert code == 0 and "stored run1/step-500@1" in out and "tolerance 1" in out, err

    code, out, _ = peerstore(capsys, "ls")
    assert code == 0 and "run1/step-500" in out and "NAME" in out and "195 KiB" in out

    code, out, _ = peerstore(capsys, "ls", "run1/step-500", "--json")
    listing = json.loads(out)
    assert code == 0 and listing[0]["name"] == "run1/step-500" and listing[0]["files"] == 2

    code, out, _ = peerstore(capsys, "get", "run1/step-500")  # default out: ./step-500
    assert code == 0 and "verified" in out
    assert snapshot(Path("step-500")) == snapshot(Path("ckpt"))

    code, _, err = peerstore(capsys, "get", "run1/step-500")
    assert code == cli.EXIT_FAILED and "--force" in err
    assert peerstore(capsys, "get", "run1/step-500", "--force", "--json")[0] == 0

    code, out, _ = peerstore(capsys, "status")
    assert code == 0 and "TOLERANCE NOW" in out and "(this node)" not in out and "alive" in out

    code, out, _ = peerstore(capsys, "rm", "run1/step-500@1")
    assert code == 0 and "removed run1/step-500@1." in out
    code, out, _ = peerstore(capsys, "ls")
    assert code == 0 and "no checkpoints" in out


@pytest.mark.parametrize(
    "put_mode, expected",
    [("ok", 0), ("fail", cli.EXIT_FAILED), ("unknown", cli.EXIT_UNKNOWN), ("drop_after_data", cli.EXIT_UNKNOWN)],
)
def test_put_exit_codes(capsys, config, node, put_mode, expected):
    node.put_mode = put_mode
    Path("m.bin").write_bytes(random_bytes(1000, 2))
    code, _, err = peerstore(capsys, "put", "m.bin", "--name", "x/m", "--stream")
    assert code == expected
    if expected == cli.EXIT_UNKNOWN:
        assert "peerstore ls" in err


@pytest.mark.parametrize("argv", [["get", "nope"], ["get", "nope@3"], ["rm", "nope"], ["ls", "nope"]])
def test_not_found_exits_4(capsys, config, node, argv):
    code, _, err = peerstore(capsys, *argv)
    assert code == cli.EXIT_NOT_FOUND and err.startswith("peerstore: ")


def test_unreachable_node_and_wrong_key_exit_1(capsys, config, node):
    code, _, err = peerstore(capsys, "--node", "127.0.0.1:1", "ls")
    assert code == cli.EXIT_FAILED and "no peerstore node at 127.0.0.1:1" in err
    other = Path("other.yaml")
    other.write_text(render_config(data_dir="d", cluster_key="cd" * 32, listen_port=node.port))
    code, _, err = peerstore(capsys, "--config", "other.yaml", "ls")
    assert code == cli.EXIT_FAILED and "check cluster_key in other.yaml" in err


def test_ctrl_c_exits_130_and_leaves_no_temp(capsys, config, node):
    node.add("run1/x", [("m.bin", random_bytes(300_000, 3), 0o644)], is_dir=False)
    node.get_mode = "freeze"
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code, _, err = peerstore(capsys, "get", "run1/x", "--out", "restored")
    finally:
        timer.cancel()
    assert code == cli.EXIT_INTERRUPTED and "interrupted" in err
    assert [p.name for p in Path(".").iterdir() if p.name.startswith(".peerstore-tmp")] == []


# -- tables


def test_listing_table_aligns_and_disambiguates_versions():
    entries = [
        {"name": "a", "version": 3, "version_id": "3.aaaaaaaaaaaaaaaa", "size": 1024, "files": 1, "tolerance": 2,
         "created": 0},
        {"name": "a", "version": 3, "version_id": "3.bbbbbbbbbbbbbbbb", "size": 5 * 1024**3, "files": 12,
         "tolerance": 1, "created": 0},
        {"name": "longer/name", "version": 1, "version_id": "1.cccccccccccccccc", "size": 0, "files": 0,
         "tolerance": 3, "created": 0},
    ]
    lines = cli.format_listing(entries).splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "SIZE", "FILES", "TOLERANCE", "CREATED"]
    assert "3.aaaaaaaa" in lines[1] and "3.bbbbbbbb" in lines[2] and " 1 " in lines[3]
    size_end = lines[0].index("SIZE") + len("SIZE")  # SIZE is right-aligned: every cell ends here
    assert [line[size_end - 1] for line in lines] == ["E", "B", "B", "B"]
    assert all(line[size_end] == " " for line in lines)


def test_status_marks_unrestorable_checkpoints():
    status = {"node_id": "0123456789abcdef", "members": [{"id": "0123456789abcdef", "self": True, "state": "alive",
                                                         "address": "127.0.0.1:7421"}],
              "checkpoints": [{"name": "a", "version": 1, "size": 10, "tolerance": 1, "tolerance_now": -1,
                               "pieces": 6}]}
    text = cli.format_status(status, "127.0.0.1:7421")
    assert "(this node)" in text and "LOST" in text and "cannot be restored" in text


def test_status_reports_a_version_claimed_by_two_checkpoints_as_corruption():
    claim = {"name": "a", "version": 3, "version_id": "3.aaaaaaaaaaaaaaaa", "size": 10, "tolerance": 1}
    status = {"node_id": "0123456789abcdef", "members": [], "checkpoints": [],
              "conflicts": [[{**claim, "manifest_id": "11" * 32}, {**claim, "manifest_id": "22" * 32}]]}
    text = cli.format_status(status, "127.0.0.1:7421")
    assert "CORRUPTION: version 3.aaaaaaaaaaaaaaaa of a is claimed by 2 different checkpoints" in text
    assert "1111111111111111, 2222222222222222" in text
