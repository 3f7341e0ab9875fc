"""The edge box's root filesystem (firmware-images/rootfs): a minimal Debian built with
mmdebstrap from Debian's packages, the agent installed from the offline installer built in
this run, the service enabled. The agent then runs inside it (chroot) with no network at
all (`unshare -n`) and generates with the tiny model.

Needs root, mmdebstrap (scripts/setup installs it) and Debian's mirror for the build; it
skips only when the mirror cannot be reached from here, and says so."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.installed.test_installer import ROOT, _env, installer  # noqa: F401 (fixture)
from tests.needs import need

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"


def _mirror_unreachable() -> str | None:
    try:
        urllib.request.urlopen(f"{MIRROR}/dists/{SUITE}/Release", timeout=15).close()
    except (urllib.error.URLError, OSError) as exc:
        return (
            f"Debian's mirror {MIRROR} is unreachable from here ({exc}): the image cannot be built"
        )
    return None


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_root_filesystem_boots_the_agent_offline_in_a_chroot(
    installer: Path,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    unreachable = _mirror_unreachable()
    if unreachable:
        need(False, unreachable)
    image = tmp_path / "rootfs"
    image.mkdir()
    built = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "firmware-images" / "rootfs"),
         "--installer", str(installer), "--out", str(image), "--suite", SUITE,
         "--mirror", MIRROR],
        env=_env(), capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]

    assert sorted(p.name for p in (image / "opt" / "edge-agent").iterdir()) == [
        "a", "launcher.py", "slots.json",
    ]  # fmt: skip
    assert (image / "etc" / "edge-agent" / "agent.toml").is_file()
    enabled = image / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert enabled.is_symlink(), "the service is not enabled in the image"
    assert "edge-agent:" in (image / "etc" / "passwd").read_text()
    assert not (image / "root" / "edge-agent-installer").exists()

    shutil.copytree(tiny_model_dir, image / "srv" / "tiny")
    # No network (-n); a /proc of its own, which onnxruntime needs, in a private mount and
    # PID namespace (-m -p), gone with it.
    unshare, chroot = shutil.which("unshare") or "unshare", shutil.which("chroot") or "chroot"
    jail = [unshare, "-n", "-m", "-p", "-f", f"--mount-proc={image / 'proc'}", chroot, str(image)]
    ran = subprocess.run(
        [*jail, "/opt/edge-agent/a/bin/edge-agent", "run", "/srv/tiny", "def main():",
         "--max-tokens", "4"],
        env={"PATH": "/usr/bin:/bin", "EDGE_AGENT_CONFIG": "/etc/edge-agent/agent.toml",
             "HOME": "/root", "ORT_DISABLE_TELEMETRY": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert ran.stdout.strip()
