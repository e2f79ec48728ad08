"""``peerstore service install|uninstall``: run this machine's node under systemd or launchd.

The templates are deploy/systemd/peerstore.service and deploy/launchd/org.peerstore.node.plist;
install fills them in for this machine (the peerstore executable of this venv, the config
file, the data directory, the user), writes the file and enables and starts the service;
uninstall stops, disables and removes it. As a user: a systemd user unit
(~/.config/systemd/user) or a launchd agent (~/Library/LaunchAgents); as root: a system unit
(/etc/systemd/system) or a launchd daemon (/Library/LaunchDaemons) that runs as --run-as.

Errors raise PeerstoreError (exit 1: a step failed, the message says what to run by hand) or
UsageError (exit 2: bad arguments or config); the caller maps them to exit codes.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from peerstore.errors import PeerstoreError, UsageError
from peerstore.shell.config import load_config

SYSTEMD_UNIT = "peerstore.service"
LAUNCHD_LABEL = "org.peerstore.node"
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
SYSTEMD_TEMPLATE = DEPLOY_DIR / "systemd" / SYSTEMD_UNIT
LAUNCHD_TEMPLATE = DEPLOY_DIR / "launchd" / f"{LAUNCHD_LABEL}.plist"
COMMAND_TIMEOUT = 60.0  # seconds for one systemctl / launchctl call
MAX_OUTPUT_CHARS = 4000  # of a failed command's output, in the error message
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_SYSTEMD_BARE = re.compile(r"[A-Za-z0-9_./:@+=,-]+")
# System units only: user units would need unprivileged user namespaces for these, which
# some kernels (Raspberry Pi OS among them, at times) do not offer.
SYSTEM_HARDENING = """\
ProtectSystem=full
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes"""

Runner = Callable[[Sequence[str]], "tuple[int, str]"]


@dataclass(frozen=True)
class Machine:
    """What a service is rendered for; :func:`this_machine` fills it in from this process."""

    platform: str  # sys.platform: "linux" or "darwin"
    root: bool
    user: str  # who runs the command
    uid: int
    home: Path
    executable: Path  # the peerstore command of this installation
    systemd_running: bool = True
    have: Callable[[str], bool] = field(default=lambda name: shutil.which(name) is not None)


@dataclass(frozen=True)
class Step:
    """One command to run; a step that ``may_fail`` (booting out a job that is not loaded)
    does not stop the others."""

    argv: tuple[str, ...]
    may_fail: bool = False

    def __str__(self) -> str:
        return " ".join(_shell_quote(a) for a in self.argv)


@dataclass(frozen=True)
class Service:
    """Where the service file goes and how it is started and stopped."""

    manager: str  # "systemd" or "launchd"
    mode: str  # "user" or "system"
    path: Path
    start: tuple[Step, ...]
    stop: tuple[Step, ...]
    after_remove: tuple[Step, ...]
    tool: str  # systemctl or launchctl
    restart: tuple[Step, ...] = ()  # after start, when the file existed: pick up the new one


def _shell_quote(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_./:@+=,%-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def find_executable() -> Path:
    """The ``peerstore`` command beside this Python (the venv's), else on PATH."""
    beside = Path(os.path.abspath(sys.executable)).parent / "peerstore"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("peerstore")
    if found:
        return Path(os.path.abspath(found))
    raise PeerstoreError("cannot find the peerstore command of this installation; run this as "
                         "`./launch.sh peerstore service install` from the repository")


def this_machine() -> Machine:
    """The Machine of this process."""
    uid = os.geteuid()
    user = pwd.getpwuid(uid).pw_name
    return Machine(platform=sys.platform, root=uid == 0, user=user, uid=uid, home=Path.home(),
                   executable=find_executable(), systemd_running=Path("/run/systemd/system").is_dir())


def choose_mode(machine: Machine, user_flag: bool, system_flag: bool) -> str:
    if user_flag and system_flag:
        raise UsageError("--user and --system exclude each other")
    if system_flag and not machine.root:
        raise UsageError("--system needs root: run it with sudo (or drop --system for a user service)")
    return "user" if user_flag or not machine.root else "system"


def manager_of(machine: Machine) -> str:
    if machine.platform.startswith("linux"):
        return "systemd"
    if machine.platform == "darwin":
        return "launchd"
    raise PeerstoreError(f"no service manager support for this platform ({machine.platform}); run "
                         "`peerstore node --config CONFIG` under your own supervisor")


def service_for(machine: Machine, mode: str, target_dir: Path | None = None) -> Service:
    """The service file's path and commands for ``mode`` ("user" or "system");
    ``target_dir`` replaces the standard directory (tests, unusual layouts)."""
    manager = manager_of(machine)
    if manager == "systemd":
        scope = ("--user",) if mode == "user" else ()
        default_dir = machine.home / ".config/systemd/user" if mode == "user" else Path("/etc/systemd/system")
        path = (target_dir or default_dir) / SYSTEMD_UNIT
        ctl = ("systemctl", *scope)
        return Service(
            manager, mode, path, tool="systemctl",
            start=(Step((*ctl, "daemon-reload")), Step((*ctl, "enable", "--now", SYSTEMD_UNIT))),
            stop=(Step((*ctl, "disable", "--now", SYSTEMD_UNIT)),),
            after_remove=(Step((*ctl, "daemon-reload")),),
            restart=(Step((*ctl, "restart", SYSTEMD_UNIT)),),
        )
    domain = f"gui/{machine.uid}" if mode == "user" else "system"
    default_dir = machine.home / "Library/LaunchAgents" if mode == "user" else Path("/Library/LaunchDaemons")
    path = (target_dir or default_dir) / f"{LAUNCHD_LABEL}.plist"
    job = f"{domain}/{LAUNCHD_LABEL}"
    return Service(
        manager, mode, path, tool="launchctl",
        # bootout first: bootstrap refuses a job that is already loaded (a reinstall).
        start=(Step(("launchctl", "bootout", job), may_fail=True), Step(("launchctl", "enable", job)),
               Step(("launchctl", "bootstrap", domain, str(path)))),
        stop=(Step(("launchctl", "bootout", job), may_fail=True),),
        after_remove=(),
    )


# ---------------------------------------------------------------------------------------
# Rendering


def _systemd_arg(text: str, *, command: bool = False) -> str:
    """One ExecStart word, quoted when needed: specifiers (%) escaped everywhere, variables
    ($) in the arguments only (systemd does not expand them in the command's path)."""
    text = text.replace("%", "%%")
    if not command:
        text = text.replace("$", "$$")
    if _SYSTEMD_BARE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_path(what: str, path: Path) -> str:
    text = str(path)
    if not path.is_absolute() or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UsageError(f"{what} {text!r} must be an absolute path without control characters")
    return text


def _fill(template: str, values: dict[str, str], source: Path) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    left = _PLACEHOLDER.search(template)
    if left:
        raise PeerstoreError(f"{source}: unknown placeholder {left.group()} (the template and "
                             "peerstore/cli/service.py disagree)")
    return template


def _template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise PeerstoreError(f"cannot read the service template {path}: {err.strerror or err}; "
                             "service install works from a clone of the repository (./launch.sh)") from None


def render_systemd(*, executable: Path, config: Path, data_dir: Path, mode: str, run_as: str | None) -> str:
    """The unit for this node; ``run_as`` (system units) is the user it runs as."""
    argv = [_check_path("the executable", executable), "node", "--config", _check_path("the config", config),
            "--log-format", "json"]
    if run_as is not None and not _USER_NAME.fullmatch(run_as):
        raise UsageError(f"{run_as!r} is not a user name systemd accepts")
    values = {
        "EXEC_START": " ".join(_systemd_arg(a, command=i == 0) for i, a in enumerate(argv)),
        "DATA_DIR": _check_path("data_dir", data_dir).replace("%", "%%"),
        "USER": f"User={run_as}" if run_as else "# (a user unit runs as the user who owns it)",
        "HARDENING": SYSTEM_HARDENING if mode == "system" else "# (more sandboxing: system units only)",
        "WANTED_BY": "multi-user.target" if mode == "system" else "default.target",
    }
    return _fill(_template(SYSTEMD_TEMPLATE), values, SYSTEMD_TEMPLATE)


def launchd_log_dir(home: Path) -> Path:
    """Where a launchd-run node logs: ~/Library/Logs/peerstore (Console.app shows it)."""
    return home / "Library/Logs/peerstore"


def render_launchd(*, executable: Path, config: Path, data_dir: Path, log_dir: Path, run_as: str | None) -> str:
    """The property list for this node; ``run_as`` (launchd daemons) is the user it runs as."""
    import plistlib  # only here: xml.sax and plistlib cost every CLI command start-up time
    from xml.sax.saxutils import escape

    if run_as is not None and not _USER_NAME.fullmatch(run_as):
        raise UsageError(f"{run_as!r} is not a user name")
    values = {
        "EXECUTABLE": _check_path("the executable", executable), "CONFIG": _check_path("the config", config),
        "DATA_DIR": _check_path("data_dir", data_dir),
        "LOG_FILE": _check_path("the log directory", log_dir) + "/node.log",
        "LAUNCHD_LOG": str(log_dir) + "/launchd.log",
    }
    values = {k: escape(v) for k, v in values.items()}
    values["USER_NAME"] = (f"\t<key>UserName</key>\n\t<string>{escape(run_as)}</string>" if run_as
                           else "\t<!-- an agent runs as the user who loads it -->")
    text = _fill(_template(LAUNCHD_TEMPLATE), values, LAUNCHD_TEMPLATE)
    plistlib.loads(text.encode())  # a template edit that breaks the XML fails here, not in launchctl
    return text


# ---------------------------------------------------------------------------------------
# Running


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run one service-manager command; (exit code, its output)."""
    try:
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, f"no answer in {COMMAND_TIMEOUT:g} s"
    return done.returncode, (done.stdout + done.stderr).strip()


def _run_steps(steps: Sequence[Step], runner: Runner, out: TextIO, what_next: str) -> None:
    for i, step in enumerate(steps):
        print(f"$ {step}", file=out)
        code, output = runner(step.argv)
        if code == 0 or step.may_fail:
            continue
        rest = "".join(f"\n  {s}" for s in steps[i + 1:])
        raise PeerstoreError(f"`{step}` failed (exit {code}): {output[-MAX_OUTPUT_CHARS:] or 'no output'}"
                             + (f"\nthen run by hand:{rest}" if rest else "") + (f"\n{what_next}" if what_next else ""))


def _manager_missing(machine: Machine, service: Service) -> str | None:
    """Why the service manager cannot be used here, or None."""
    if not machine.have(service.tool):
        return f"{service.tool} is not installed"
    if service.manager == "systemd" and not machine.systemd_running:
        return "systemd is not running on this machine (no /run/systemd/system: a container?)"
    return None


def _user_for_system_service(config_path: Path, run_as: str | None) -> str:
    if run_as:
        return run_as
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and sudo_user != "root":
        return sudo_user
    try:
        return pwd.getpwuid(config_path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return "root"


def _make_dir(path: Path, owner: str | None) -> None:
    """Create a directory the service needs, owned by the user it runs as."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def install(machine: Machine, config_path: Path, *, mode: str, run_as: str | None = None,
            target_dir: Path | None = None, dry_run: bool = False, start: bool = True,
            runner: Runner | None = None, out: TextIO | None = None) -> int:
    """Render, write, enable and start the service; returns 0 or raises (see the module doc)."""
    out = sys.stdout if out is None else out
    runner = runner or run_command
    service = service_for(machine, mode, target_dir)
    config_path = Path(os.path.abspath(config_path))
    config = load_config(config_path)
    data_dir = Path(os.path.abspath(config.data_dir))
    owner = _user_for_system_service(config_path, run_as) if mode == "system" else None
    if owner is not None:
        try:
            home = Path(pwd.getpwnam(owner).pw_dir)
        except KeyError:
            raise UsageError(f"--run-as {owner}: no such user on this machine") from None
    else:
        home = machine.home
    log_dir = launchd_log_dir(home)
    if service.manager == "systemd":
        text = render_systemd(executable=machine.executable, config=config_path, data_dir=data_dir, mode=mode,
                              run_as=owner)
    else:
        text = render_launchd(executable=machine.executable, config=config_path, data_dir=data_dir,
                              log_dir=log_dir, run_as=owner)
    steps = list(service.start) + (list(service.restart) if service.path.exists() else [])
    if dry_run:
        print(f"# {service.path} ({service.manager} {mode} service), not written (--dry-run):", file=out)
        print(text, file=out, end="" if text.endswith("\n") else "\n")
        print(f"# then{' (skipped with --no-start)' if not start else ''}:", file=out)
        for step in steps:
            print(f"$ {step}", file=out)
        return 0
    try:
        _make_dir(data_dir, owner)
        if service.manager == "launchd":
            _make_dir(log_dir, owner)
        service.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = service.path.with_name(service.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, service.path)
    except OSError as err:
        raise PeerstoreError(f"cannot write {service.path}: {err.strerror or err}"
                             + ("; run it as root (sudo) for a system service" if mode == "system" else "")) from None
    print(f"wrote {service.path}", file=out)
    if owner == "root":
        print("note: the node runs as root; pass --run-as USER to run it as that user", file=out)
    by_hand = "".join(f"\n  {s}" for s in steps)
    if not start:
        print(f"not started (--no-start); to enable and start it:{by_hand}", file=out)
        return 0
    missing = _manager_missing(machine, service)
    if missing:
        raise PeerstoreError(f"{missing}, so the service was written but not started: {service.path}\n"
                             f"where {service.manager} runs, start it with:{by_hand}\n"
                             "or run the node yourself: " + " ".join(
                                 _shell_quote(a) for a in (str(machine.executable), "node", "--config", str(config_path))))
    _run_steps(steps, runner, out, "")
    print(f"started: {status_hint(service)}", file=out)
    if service.manager == "systemd" and mode == "user" and not Path(f"/var/lib/systemd/linger/{machine.user}").exists():
        print(f"note: a user service runs only while {machine.user} is logged in; to start it at boot and keep "
              f"it running after logout: sudo loginctl enable-linger {machine.user}", file=out)
    return 0


def status_hint(service: Service) -> str:
    """How to see the service and its logs."""
    if service.manager == "systemd":
        scope = " --user" if service.mode == "user" else ""
        return f"systemctl{scope} status peerstore; logs: journalctl{scope} -u peerstore -o cat"
    domain = service.stop[0].argv[2]
    return f"launchctl print {domain}; logs in ~/Library/Logs/peerstore/node.log"


def uninstall(machine: Machine, *, mode: str, target_dir: Path | None = None, dry_run: bool = False,
              runner: Runner | None = None, out: TextIO | None = None) -> int:
    """Stop, disable and remove the service; 0 when it is gone (or was never there)."""
    out = sys.stdout if out is None else out
    runner = runner or run_command
    service = service_for(machine, mode, target_dir)
    if not service.path.exists():
        other = "--system (as root)" if mode == "user" else "--user"
        print(f"no peerstore service at {service.path}; nothing to remove (installed with {other}?)", file=out)
        return 0
    if dry_run:
        for step in service.stop:
            print(f"$ {step}", file=out)
        print(f"$ rm {_shell_quote(str(service.path))}", file=out)
        for step in service.after_remove:
            print(f"$ {step}", file=out)
        return 0
    missing = _manager_missing(machine, service)
    if missing:  # then nothing runs it: removing the file is all there is to do
        print(f"{missing}: nothing to stop", file=out)
    else:
        _run_steps(service.stop, runner, out, f"the service file {service.path} is still there")
    try:
        service.path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise PeerstoreError(f"stopped the service but cannot remove {service.path}: {err.strerror or err}") from None
    print(f"removed {service.path}", file=out)
    if not missing:
        _run_steps(service.after_remove, runner, out, "")
    return 0


# ---------------------------------------------------------------------------------------
# Command line

EPILOG = """\
examples:
  ./launch.sh peerstore service install                 a user service from ./config.yaml
  sudo .venv/bin/peerstore service install --config /home/pi/peerstore/config.yaml
  peerstore service install --dry-run                   print the file and the commands only
  peerstore service uninstall

As a user it writes a systemd user unit (~/.config/systemd/user/peerstore.service) or a launchd
agent (~/Library/LaunchAgents/org.peerstore.node.plist); as root a system unit
(/etc/systemd/system/peerstore.service, running as --run-as: default the sudo user, else the
config file's owner) or a launchd daemon (/Library/LaunchDaemons). The node logs JSON lines:
to the journal under systemd, to ~/Library/Logs/peerstore/node.log under launchd.

exit codes: 0 done (or nothing to remove); 1 a step failed, or no systemctl/launchctl (the file
is written; the message says what to run by hand); 2 usage or config error.
"""


def add_service_parser(command: Callable[..., argparse.ArgumentParser],
                       resolve_config: Callable[..., Path]) -> None:
    """Register ``service`` with the peerstore parser's ``command`` helper."""
    p = command("service", "install or remove this machine's node as a systemd or launchd service",
                "Run this machine's node as a service that starts at boot (or login) and restarts "
                "on failure: install writes the systemd unit or launchd property list for this "
                "machine and starts it; uninstall stops and removes it.", EPILOG,
                lambda args: _cmd_service(args, resolve_config))
    p.add_argument("action", choices=("install", "uninstall"))
    p.add_argument("--dry-run", action="store_true", help="print the file and the commands; change nothing")
    p.add_argument("--no-start", action="store_true", help="install: write the file, enable and start nothing")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--user", action="store_true", help="a per-user service (the default unless root)")
    scope.add_argument("--system", action="store_true", help="a system service (the default as root)")
    p.add_argument("--run-as", metavar="USER", help="system service: the user the node runs as "
                   "(default: the sudo user, else the config file's owner)")
    p.add_argument("--dir", metavar="DIR", type=Path, help="write the service file into DIR instead of the "
                   "standard directory")


def _cmd_service(args: argparse.Namespace, resolve_config: Callable[..., Path]) -> int:
    machine = this_machine()
    mode = choose_mode(machine, args.user, args.system)
    if args.run_as and mode != "system":
        raise UsageError("--run-as is for system services (run as root)")
    if args.action == "uninstall":
        return uninstall(machine, mode=mode, target_dir=args.dir, dry_run=args.dry_run)
    config_path = resolve_config(args.config, include_local=False)
    return install(machine, config_path, mode=mode, run_as=args.run_as, target_dir=args.dir,
                   dry_run=args.dry_run, start=not args.no_start)
