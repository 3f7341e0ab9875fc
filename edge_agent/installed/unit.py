"""The systemd unit of the installed agent, and `edge-agent install-service` /
`uninstall-service`.

The unit starts the A/B launcher (edge_agent/installed/launcher.py, copied to the install
root by the installer), which starts the committed slot's `edge-agent serve`. It is
hardened the way `systemd-analyze security` asks: its own user, a read-only system, no
capabilities, only the address families the agent uses, a system-call filter. The launcher
and the install root stay writable so that the agent can install its next release into the
other slot (the price of self-update without a privileged helper: the service user can
change its own code; it still cannot touch anything else).

GPUs: `PrivateDevices=yes` hides /dev/nvidia* and /dev/dri; for execution_provider cuda or
webgpu add a drop-in with `PrivateDevices=no` and `DeviceAllow=` lines for the devices.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "edge-agent.service"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_ROOT = Path("/opt/edge-agent")
DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")
DEFAULT_USER = "edge-agent"
LAUNCHER_FILE = "launcher.py"


@dataclass(frozen=True)
class UnitSettings:
    python: Path  # the interpreter the slots were made with (absolute)
    root: Path = DEFAULT_ROOT
    config: Path = DEFAULT_CONFIG
    user: str = DEFAULT_USER
    trial_deadline_seconds: int = 120
    watchdog_seconds: int = 60
    listen: str = "127.0.0.1:8080"  # the agent's [api] host:port, held by the launcher


def render_unit(settings: UnitSettings) -> str:
    launcher = settings.root / LAUNCHER_FILE
    return f"""\
# Written by `edge-agent install-service`; `edge-agent uninstall-service` removes it.
[Unit]
Description=edge-agent: offline inference for ONNX small language models
After=network-online.target
Wants=network-online.target
# Restart=on-failure, but not forever: 5 failed starts in 10 minutes stop the unit.
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
User={settings.user}
Group={settings.user}
Environment=EDGE_AGENT_CONFIG={settings.config}
Environment=PYTHONDONTWRITEBYTECODE=1
ExecStart={settings.python} -I {launcher} --root {settings.root} \
    --deadline {settings.trial_deadline_seconds} --listen {settings.listen} -- serve
# Loading a model and, after a self-update, falling back may both take a while.
TimeoutStartSec={settings.trial_deadline_seconds * 2 + 60}
TimeoutStopSec=60
WatchdogSec={settings.watchdog_seconds}
Restart=on-failure
RestartSec=5
StateDirectory=edge-agent
StateDirectoryMode=0750
ConfigurationDirectory=edge-agent
ReadWritePaths={settings.root}
StandardOutput=journal
StandardError=journal
SyslogIdentifier=edge-agent
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
KeyringMode=private
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RemoveIPC=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources @mount @swap @reboot @raw-io @module
SystemCallFilter=~@debug @cpu-emulation @obsolete
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def systemd_running() -> bool:
    """True where systemd is PID 1 (sd_booted(3)'s test)."""
    return Path("/run/systemd/system").is_dir()


def _systemctl(*args: str) -> None:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)} failed: {done.stderr.strip()}")


def install_service(
    settings: UnitSettings, unit_dir: Path = DEFAULT_UNIT_DIR, *, enable: bool = True
) -> Path:
    """Write the unit; where systemd runs, reload it and enable + start the service."""
    launcher = settings.root / LAUNCHER_FILE
    if not launcher.is_file():
        raise FileNotFoundError(
            f"{launcher} is missing: install the agent with the installer's `install` script "
            f"(it puts the launcher there), or pass --root where it lives"
        )
    unit_dir.mkdir(parents=True, exist_ok=True)
    unit = unit_dir / UNIT_NAME
    tmp = unit.with_name(f".{UNIT_NAME}.tmp")
    tmp.write_text(render_unit(settings))
    tmp.chmod(0o644)
    tmp.replace(unit)
    if systemd_running() and shutil.which("systemctl"):
        _systemctl("daemon-reload")
        if enable:
            _systemctl("enable", "--now", UNIT_NAME)
    return unit


def uninstall_service(unit_dir: Path = DEFAULT_UNIT_DIR) -> bool:
    """Stop, disable and remove the unit; False when none was installed."""
    unit = unit_dir / UNIT_NAME
    if not unit.exists():
        return False
    if systemd_running() and shutil.which("systemctl"):
        _systemctl("disable", "--now", UNIT_NAME)
    unit.unlink()
    if systemd_running() and shutil.which("systemctl"):
        _systemctl("daemon-reload")
    return True
