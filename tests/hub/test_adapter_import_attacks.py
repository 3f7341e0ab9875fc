"""Broken PEFT folders given to `import-adapter`: each is refused with what was wrong, and
nothing is published (no release, no staging left behind)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from hub.registry.adapter_convert import PEFT_CONFIG, PEFT_WEIGHTS
from hub.registry.adapter_import import import_adapter
from hub.registry.errors import ReleaseNotFound, ReleaseRefused
from hub.registry.importer import STAGING_DIR
from hub.registry.repository import ReleaseRepository


def _huge_header(folder: Path) -> None:
    (folder / PEFT_WEIGHTS).write_bytes(struct.pack("<Q", 2**62) + b"{}")


def _garbage(folder: Path) -> None:
    (folder / PEFT_WEIGHTS).write_bytes(b"\x00" * 64)


def _config_is_a_list(folder: Path) -> None:
    (folder / PEFT_CONFIG).write_text("[1, 2]")


def _alpha_is_text(folder: Path) -> None:
    config = json.loads((folder / PEFT_CONFIG).read_text())
    (folder / PEFT_CONFIG).write_text(json.dumps({**config, "lora_alpha": "lots"}))


def _b_of_another_rank(folder: Path) -> None:
    weights = load_file(str(folder / PEFT_WEIGHTS))
    key = next(k for k in sorted(weights) if k.endswith("lora_B.weight"))
    weights[key] = weights[key][:, :1].copy()
    save_file(weights, str(folder / PEFT_WEIGHTS))


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_huge_header, "not readable safetensors"),
        (_garbage, "not readable safetensors"),
        (_config_is_a_list, "peft_type must be LORA"),
        (_alpha_is_text, "lora_alpha must be a number, not 'lots'"),
        (_b_of_another_rank, "has rank 1, its pair"),
    ],
)
def test_a_broken_peft_folder_is_refused_and_nothing_is_published(
    repo: ReleaseRepository,
    tiny_lora_base_dir: Path,
    peft_adapters: dict[str, Path],
    tmp_path: Path,
    damage: Callable[[Path], None],
    why: str,
) -> None:
    repo.publish(tiny_lora_base_dir, "tiny", "1.0.0")
    folder = tmp_path / "peft"
    shutil.copytree(peft_adapters["contracts-fr"], folder)
    damage(folder)
    with pytest.raises(ReleaseRefused, match=why):
        import_adapter(repo, folder, "tiny@1.0.0", "broken", "1.0.0")
    with pytest.raises(ReleaseNotFound):
        repo.manifest("broken", "1.0.0")
    staging = repo.root / STAGING_DIR
    assert not staging.exists() or list(staging.iterdir()) == []
