"""`peerstore service install|uninstall`: the rendered systemd unit and launchd plist, the
commands it would run (an injected runner: no test touches this machine's service manager),
and exit codes. The unit is checked by the real `systemd-analyze verify`."""

from __future__ import annotations

import io
import os
import plistlib
import pwd
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from peerstore.cli import service
from peerstore.cli.commands import main
from peerstore.cli.service import Machine, install, render_launchd, render_systemd, uninstall
from peerstore.errors import PeerstoreError, UsageError

KEY = "cd" * 32
EXE = Path(os.path.abspath(sys.executable)).parent / "peerstore"  # a real executable: verify checks it
ANALYZE_SECONDS = 30


def machine(tmp_path: Path, platform: str = "linux", root: bool = False, **changes) -> Machine:
    base = Machine(platform=platform, root=root, user="root" if root else "pi", uid=0 if root else 1000,
                   home=tmp_path / "home", executable=EXE, systemd_running=True, have=lambda name: True)
    return replace(base, **changes)


def write_config(tmp_path: Path, data_dir: str = "data") -> Path:
    path = tmp_path / "cfg" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"data_dir": data_dir, "cluster_key": KEY}))
    return path


class Runner:
    """Records the commands; ``fail`` maps a command's words to an exit code."""

    def __init__(self, fail: dict[str, int] | None = None):
        self.calls: list[list[str]] = []
        self.fail = fail or {}

    def __call__(self, argv):
        self.calls.append(list(argv))
        code = self.fail.get(" ".join(argv), 0)
        return code, "boom" if code else ""


def units(path: Path) -> dict[str, list[str]]:
    """key -> values of a rendered unit (comments and sections dropped)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


# -- systemd --------------------------------------------------------------------------------------

def test_user_unit_is_rendered_for_this_machine_and_started_with_systemctl_user(tmp_path):
    config = write_config(tmp_path)
    runner, out = Runner(), io.StringIO()
    assert install(machine(tmp_path), config, mode="user", target_dir=tmp_path / "units", runner=runner, out=out) == 0
    unit = tmp_path / "units" / "peerstore.service"
    keys = units(unit)
    assert keys["ExecStart"] == [f"{EXE} node --config {config} --log-format json"]
    assert keys["WorkingDirectory"] == [str(tmp_path / "cfg" / "data")]
    assert (tmp_path / "cfg" / "data").is_dir()  # created: systemd refuses a missing WorkingDirectory
    assert keys["Restart"] == ["on-failure"] and keys["RestartSec"] == ["5"]
    assert keys["LimitNOFILE"] == ["65536"] and keys["NoNewPrivileges"] == ["yes"]
    assert keys["After"] == ["network-online.target"] and keys["Wants"] == ["network-online.target"]
    assert keys["KillSignal"] == ["SIGTERM"]  # what peerstore/shell/daemon/main.py handles: leave, then exit
    assert keys["WantedBy"] == ["default.target"]
    assert "User" not in keys and "ProtectSystem" not in keys
    assert runner.calls == [["systemctl", "--user", "daemon-reload"],
                            ["systemctl", "--user", "enable", "--now", "peerstore.service"]]
    assert "loginctl enable-linger pi" in out.getvalue()


def test_system_unit_runs_as_the_given_user_with_hardening(tmp_path):
    config = write_config(tmp_path)
    runner = Runner()
    owner = pwd.getpwuid(os.geteuid()).pw_name  # a user that exists here
    install(machine(tmp_path, root=True), config, mode="system", run_as=owner, target_dir=tmp_path / "etc",
            runner=runner, out=io.StringIO())
    keys = units(tmp_path / "etc" / "peerstore.service")
    assert keys["User"] == [owner] and keys["WantedBy"] == ["multi-user.target"]
    assert keys["ProtectSystem"] == ["full"]
    assert runner.calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "peerstore.service"]]


def test_reinstall_restarts_to_pick_up_the_new_unit(tmp_path):
    config = write_config(tmp_path)
    for _ in range(2):
        runner = Runner()
        install(machine(tmp_path), config, mode="user", target_dir=tmp_path, runner=runner, out=io.StringIO())
    assert runner.calls[-1] == ["systemctl", "--user", "restart", "peerstore.service"]


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed; CI installs package systemd (.ci/run)")
    return path


def verify(unit: Path, user: bool, tmp_path: Path) -> list[str]:
    """What `systemd-analyze verify` says about the unit: [] when it is clean."""
    env = dict(os.environ)
    argv = [systemd_analyze()]
    if user:  # the user manager needs a runtime directory; a private one keeps this machine's out of it
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        argv.append("--user")
    done = subprocess.run([*argv, "verify", str(unit)], capture_output=True, text=True, env=env,
                          timeout=ANALYZE_SECONDS)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if unit.name in line or str(unit) in line]
    if done.returncode != 0:
        complaints.append(f"exit {done.returncode}: {done.stderr.strip()}")
    return complaints


@pytest.mark.needs_real
@pytest.mark.parametrize("mode", ["user", "system"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, mode):
    # Spaces, % and $ in paths exercise the quoting; the executable must exist (verify checks it).
    exe_dir = tmp_path / "venv dir$x" / "bin"
    exe_dir.mkdir(parents=True)
    (exe_dir / "peerstore").symlink_to(EXE)
    config = write_config(tmp_path, data_dir="data 100%")
    m = machine(tmp_path, root=mode == "system", executable=exe_dir / "peerstore")
    run_as = pwd.getpwuid(os.geteuid()).pw_name if mode == "system" else None
    install(m, config, mode=mode, run_as=run_as, target_dir=tmp_path / "units", runner=Runner(), out=io.StringIO())
    unit = tmp_path / "units" / "peerstore.service"
    assert verify(unit, mode == "user", tmp_path) == []
    # The check itself catches a bad unit: a wrong value and a missing executable.
    broken = tmp_path / "broken" / "peerstore.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert verify(broken, mode == "user", tmp_path)
    broken.write_text(unit.read_text().replace(str(exe_dir), str(tmp_path / "nowhere")))
    assert verify(broken, mode == "user", tmp_path)


def test_exec_start_quotes_what_systemd_would_split_or_expand():
    text = render_systemd(executable=Path("/opt/my venv/bin/peerstore"), config=Path("/etc/100%/$HOME.yaml"),
                          data_dir=Path("/srv/p%s"), mode="user", run_as=None)
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    assert line == 'ExecStart="/opt/my venv/bin/peerstore" node --config "/etc/100%%/$$HOME.yaml" --log-format json'
    assert "WorkingDirectory=/srv/p%%s" in text
    with pytest.raises(UsageError):
        render_systemd(executable=EXE, config=Path("relative.yaml"), data_dir=Path("/d"), mode="user", run_as=None)
    with pytest.raises(UsageError):
        render_systemd(executable=EXE, config=Path("/c.yaml"), data_dir=Path("/d"), mode="system", run_as="x y")


# -- launchd --------------------------------------------------------------------------------------

def lint_plist(path: Path) -> dict:
    plutil = shutil.which("plutil")
    if sys.platform == "darwin" and plutil:
        done = subprocess.run([plutil, "-lint", str(path)], capture_output=True, text=True, timeout=ANALYZE_SECONDS)
        assert done.returncode == 0, done.stdout + done.stderr
    return plistlib.loads(path.read_bytes())


def test_launchd_agent_has_what_launchd_needs_and_is_bootstrapped(tmp_path):
    config = write_config(tmp_path / "a&b <c>")  # XML-special characters in the path
    m = machine(tmp_path, platform="darwin", uid=501)
    runner = Runner()
    install(m, config, mode="user", target_dir=tmp_path / "agents", runner=runner, out=io.StringIO())
    path = tmp_path / "agents" / "org.peerstore.node.plist"
    plist = lint_plist(path)
    logs = m.home / "Library/Logs/peerstore"
    assert plist["Label"] == "org.peerstore.node"
    assert plist["ProgramArguments"] == [str(EXE), "node", "--config", str(config), "--log-format", "json",
                                         "--log-file", str(logs / "node.log")]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(logs / "launchd.log")
    assert plist["WorkingDirectory"] == str(config.parent / "data") and "UserName" not in plist
    assert logs.is_dir()
    assert runner.calls == [["launchctl", "bootout", "gui/501/org.peerstore.node"],
                            ["launchctl", "enable", "gui/501/org.peerstore.node"],
                            ["launchctl", "bootstrap", "gui/501", str(path)]]


def test_launchd_bootout_of_a_job_not_loaded_is_not_an_error(tmp_path):
    config = write_config(tmp_path)
    runner = Runner(fail={"launchctl bootout gui/501/org.peerstore.node": 3})
    assert install(machine(tmp_path, platform="darwin", uid=501), config, mode="user", target_dir=tmp_path,
                   runner=runner, out=io.StringIO()) == 0
    assert runner.calls[-1][:2] == ["launchctl", "bootstrap"]


def test_launchd_daemon_names_its_user():
    text = render_launchd(executable=EXE, config=Path("/c.yaml"), data_dir=Path("/d"), log_dir=Path("/l"),
                          run_as="pi")
    assert plistlib.loads(text.encode())["UserName"] == "pi"


# -- dry run, no start, failures, exit codes ------------------------------------------------------

def test_dry_run_prints_the_file_and_commands_and_writes_nothing(tmp_path):
    config = write_config(tmp_path)
    runner, out = Runner(), io.StringIO()
    assert install(machine(tmp_path), config, mode="user", target_dir=tmp_path / "u", dry_run=True,
                   runner=runner, out=out) == 0
    assert runner.calls == [] and not (tmp_path / "u").exists() and not (tmp_path / "cfg" / "data").exists()
    text = out.getvalue()
    assert "ExecStart=" in text and "$ systemctl --user enable --now peerstore.service" in text


def test_no_start_writes_only(tmp_path):
    config = write_config(tmp_path)
    runner, out = Runner(), io.StringIO()
    install(machine(tmp_path), config, mode="user", target_dir=tmp_path, start=False, runner=runner, out=out)
    assert runner.calls == [] and (tmp_path / "peerstore.service").is_file()
    assert "systemctl --user daemon-reload" in out.getvalue()


@pytest.mark.parametrize("changes,words", [
    ({"have": lambda name: False}, "systemctl is not installed"),
    ({"systemd_running": False}, "systemd is not running"),
])
def test_without_a_usable_systemctl_the_file_is_written_and_the_error_says_what_to_run(tmp_path, changes, words):
    config = write_config(tmp_path)
    runner = Runner()
    with pytest.raises(PeerstoreError) as err:
        install(machine(tmp_path, **changes), config, mode="user", target_dir=tmp_path, runner=runner,
                out=io.StringIO())
    unit = tmp_path / "peerstore.service"
    message = str(err.value)
    assert unit.is_file() and runner.calls == []
    assert words in message and str(unit) in message and "systemctl --user enable --now peerstore.service" in message


def test_a_failing_command_stops_install_and_names_what_is_left(tmp_path):
    config = write_config(tmp_path)
    runner = Runner(fail={"systemctl --user daemon-reload": 1})
    with pytest.raises(PeerstoreError) as err:
        install(machine(tmp_path), config, mode="user", target_dir=tmp_path, runner=runner, out=io.StringIO())
    assert runner.calls == [["systemctl", "--user", "daemon-reload"]]
    assert "exit 1" in str(err.value) and "boom" in str(err.value) and "enable --now" in str(err.value)


def test_uninstall_stops_disables_removes_and_reloads(tmp_path):
    config = write_config(tmp_path)
    install(machine(tmp_path), config, mode="user", target_dir=tmp_path, runner=Runner(), out=io.StringIO())
    runner = Runner()
    assert uninstall(machine(tmp_path), mode="user", target_dir=tmp_path, runner=runner, out=io.StringIO()) == 0
    assert not (tmp_path / "peerstore.service").exists()
    assert runner.calls == [["systemctl", "--user", "disable", "--now", "peerstore.service"],
                            ["systemctl", "--user", "daemon-reload"]]
    again = Runner()
    out = io.StringIO()
    assert uninstall(machine(tmp_path), mode="user", target_dir=tmp_path, runner=again, out=out) == 0
    assert again.calls == [] and "nothing to remove" in out.getvalue()


def test_uninstall_keeps_the_file_when_the_service_does_not_stop(tmp_path):
    config = write_config(tmp_path)
    install(machine(tmp_path), config, mode="user", target_dir=tmp_path, runner=Runner(), out=io.StringIO())
    runner = Runner(fail={"systemctl --user disable --now peerstore.service": 1})
    with pytest.raises(PeerstoreError, match="still there"):
        uninstall(machine(tmp_path), mode="user", target_dir=tmp_path, runner=runner, out=io.StringIO())
    assert (tmp_path / "peerstore.service").is_file()


def test_uninstall_where_systemd_does_not_run_just_removes_the_file(tmp_path):
    config = write_config(tmp_path)
    m = machine(tmp_path, systemd_running=False)
    install(m, config, mode="user", target_dir=tmp_path, start=False, runner=Runner(), out=io.StringIO())
    runner, out = Runner(), io.StringIO()
    assert uninstall(m, mode="user", target_dir=tmp_path, runner=runner, out=out) == 0
    assert runner.calls == [] and not (tmp_path / "peerstore.service").exists()
    assert "nothing to stop" in out.getvalue()


def run_cli(monkeypatch, m: Machine, argv: list[str], runner: Runner | None = None) -> int:
    monkeypatch.setattr(service, "this_machine", lambda: m)
    monkeypatch.setattr(service, "run_command", runner or Runner())
    return main(argv)


def test_exit_codes_scripts_can_trust(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    m = machine(tmp_path)
    base = ["service", "install", "--config", str(config), "--dir", str(tmp_path / "u")]
    runner = Runner()
    assert run_cli(monkeypatch, m, base, runner) == 0 and len(runner.calls) == 2
    assert run_cli(monkeypatch, m, base, Runner(fail={"systemctl --user daemon-reload": 1})) == 1
    assert run_cli(monkeypatch, replace(m, have=lambda name: False), base) == 1
    assert run_cli(monkeypatch, replace(m, platform="freebsd13"), base) == 1
    assert "no service manager support" in capsys.readouterr().err
    assert run_cli(monkeypatch, m, [*base, "--system"]) == 2  # not root
    assert run_cli(monkeypatch, m, ["service", "install", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert run_cli(monkeypatch, m, ["service", "uninstall", "--dir", str(tmp_path / "u")]) == 0
    assert not (tmp_path / "u" / "peerstore.service").exists()
