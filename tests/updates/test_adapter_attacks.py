"""Hostile adapter releases signed by the hub: a `base` that is no model name, that names
the adapter itself or another adapter, and `.onnx_adapter` files whose tensors have the
wrong names, shapes or dtypes. Each is refused (before any byte moves where the manifest
alone shows it) and nothing is left active."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest

from edge_agent.runtime.adapters import ADAPTER_CONFIG, ADAPTER_FILE, LORA_INPUTS
from edge_agent.updates.errors import HealthCheckFailed, Refused
from hub.registry.adapter_import import import_adapter
from hub.registry.repository import ReleaseRepository
from tests.updates.test_adapter_install import Device


@pytest.fixture(scope="module")
def repo(
    tiny_lora_base_dir: Path,
    peft_adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> ReleaseRepository:
    tmp = tmp_path_factory.mktemp("attack-repo")
    repo = ReleaseRepository.create(tmp / "repo", tmp / "keys")
    repo.publish(tiny_lora_base_dir, "tiny", "1.0.0")
    import_adapter(repo, peft_adapters["contracts-fr"], "tiny@1.0.0", "contracts-fr", "1.0.0")
    return repo


def _publish_adapter(
    repo: ReleaseRepository,
    folder: Path,
    name: str,
    base: str,
    tensors: dict[str, np.ndarray] | None = None,
) -> None:
    """Sign an adapter release as the hub would, without the hub's checks."""
    folder.mkdir(parents=True)
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    tensors = tensors or {"unused": np.zeros((1, 1), np.float32)}
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in tensors.items()})
    adapter.export_adapter(str(folder / ADAPTER_FILE))
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"base": base}))
    repo.publish(folder, name, "1.0.0", kind="adapter", base=base)


@pytest.mark.parametrize(
    ("name", "base", "why"),
    [
        ("climb", "../tiny@1.0.0", "no usable base: Value error, model names are 1-64"),
        ("slash", "tiny/x@1.0.0", "names no usable base"),
        ("odd-version", "tiny@../1.0.0", "names no usable base"),
        ("itself", "itself@1.0.0", "names itself as its base"),
        ("on-adapter", "contracts-fr@1.0.0", "contracts-fr 1.0.0, which is a LoRA adapter itself"),
    ],
)
def test_an_adapter_whose_base_is_no_installed_model_is_refused_before_any_byte_moves(
    repo: ReleaseRepository, tmp_path: Path, name: str, base: str, why: str
) -> None:
    _publish_adapter(repo, tmp_path / "release", name, base)
    device = Device(repo, tmp_path / "device")
    device.update("tiny", "1.0.0")
    device.update("contracts-fr")
    before = device.files()
    with pytest.raises(Refused, match=re.escape(why)):
        device.update(name)
    assert device.files() == before


def _tensors(base_dir: Path, rank: int, dtype: type, transpose: bool) -> dict[str, np.ndarray]:
    shapes = json.loads((base_dir / LORA_INPUTS).read_text())
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for input_name, (rows, cols) in shapes.items():
        shape = (rows or rank, cols or rank)
        out[input_name] = rng.standard_normal(shape[::-1] if transpose else shape).astype(dtype)
    return out


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("wrong-shapes", "k_proj.lora_A.MatMul.weight has shape [3, 64], the base takes [64, 0]"),
        ("wrong-dtype", "k_proj.lora_A.MatMul.weight is tensor(float16), not tensor(float)"),
        ("ranks-differ", "k_proj.lora_B.MatMul.weight has rank 5, its pair 4"),
    ],
)
def test_a_signed_adapter_with_wrong_tensors_fails_its_health_check_and_is_rolled_back(
    repo: ReleaseRepository, tiny_lora_base_dir: Path, tmp_path: Path, case: str, why: str
) -> None:
    if case == "wrong-shapes":
        tensors = _tensors(tiny_lora_base_dir, 3, np.float32, transpose=True)
    elif case == "wrong-dtype":
        tensors = _tensors(tiny_lora_base_dir, 4, np.float16, transpose=False)
    else:  # every A of rank 4, every B of rank 5
        tensors = {
            k: v[:5] if ".lora_B." in k else v
            for k, v in _tensors(tiny_lora_base_dir, 5, np.float32, False).items()
        }
        tensors = {k: v if ".lora_B." in k else v[:, :4] for k, v in tensors.items()}
    name = f"bad-{case}"
    _publish_adapter(repo, tmp_path / "release", name, "tiny@1.0.0", tensors)
    device = Device(repo, tmp_path / "device")
    device.update("tiny", "1.0.0")
    with pytest.raises(HealthCheckFailed, match=f"{name} 1.0.0 failed .*{re.escape(why)}"):
        device.update(name)
    store = device.store
    assert store.active(name) is None
    assert store.active("tiny") is not None and store.active("tiny").version == "1.0.0"  # type: ignore[union-attr]
