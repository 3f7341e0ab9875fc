"""`edge-hub model import-adapter`: a PEFT LoRA adapter in, a signed adapter release out.

The base must be a release of this repository that was built to accept adapters. Its
files are rebuilt from the repository's own chunks (verified against its manifest), the
adapter is converted for it (hub.registry.adapter_convert), and it must generate with the
adapter active on that base before it is published. The release holds only the adapter
(`adapter.onnx_adapter`, `adapter.json`); its manifest says `kind: adapter` and names its
base as NAME@VERSION, so a device installs it only next to that base.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from edge_agent.protocol import ReleaseManifest, chunk_path
from edge_agent.runtime.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    LORA_INPUTS,
    AdapterRef,
    parse_base,
)
from hub.registry.adapter_convert import convert_adapter, read_peft_config
from hub.registry.errors import ReleaseNotFound, ReleaseRefused
from hub.registry.importer import STAGING_DIR
from hub.registry.repository import ReleaseRepository
from hub.registry.smoke import SmokeResult, smoke_generate

ADAPTER_KIND = "adapter"


def import_adapter(
    repo: ReleaseRepository,
    peft_dir: Path,
    base: str,
    name: str,
    version: str,
    *,
    on_stage: Callable[[str], None] | None = None,
    on_smoke: Callable[[SmokeResult], None] | None = None,
) -> ReleaseManifest:
    stage = on_stage or (lambda _text: None)
    peft_dir = peft_dir.expanduser()
    try:
        base_name, base_version = parse_base(base)
    except ValueError as exc:
        raise ReleaseRefused(str(exc)) from None
    repo.check_new_release(name, version)
    read_peft_config(peft_dir)  # a wrong folder is refused before the base is rebuilt
    base_manifest = _base_manifest(repo, base_name, base_version)
    staging_root = repo.root / STAGING_DIR
    staging_root.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=staging_root))
    try:
        stage(f"rebuilding base {base} from the repository's chunks")
        base_dir = materialize(repo.root, base_manifest, staging / "base")
        stage(f"converting {peft_dir} for {base}")
        release_dir = staging / "adapter"
        converted = convert_adapter(peft_dir, base_dir, release_dir / ADAPTER_FILE)
        base_ref = f"{base_name}@{base_version}"
        record = {
            "base": base_ref,
            "format": "onnx_adapter",
            "rank": converted.rank,
            "targets": list(converted.targets),
        }
        (release_dir / ADAPTER_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
        stage("loading the base with the adapter and generating a few tokens")
        ref = AdapterRef(name, release_dir, base_name, base_version)
        result = smoke_generate(base_dir, adapter=ref)
        if on_smoke is not None:
            on_smoke(result)
        stage("chunking and signing the release")
        return repo.publish(
            release_dir,
            name,
            version,
            quantization={k: v for k, v in record.items() if k != "base"},
            kind=ADAPTER_KIND,
            base=base_ref,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _base_manifest(repo: ReleaseRepository, name: str, version: str) -> ReleaseManifest:
    try:
        manifest = repo.manifest(name, version)
    except ReleaseNotFound as exc:
        raise ReleaseRefused(f"unknown base {name}@{version}: {exc}") from None
    kind = (manifest.model_extra or {}).get("kind", "model")
    if kind != "model":
        raise ReleaseRefused(
            f"base {name}@{version} is a release of kind '{kind}', not a generation model"
        )
    if LORA_INPUTS not in {entry.path for entry in manifest.files}:
        raise ReleaseRefused(
            f"base {name}@{version} was not built to accept adapters; import its Hugging "
            "Face folder again as a new version with --adapter-targets (for example "
            "q_proj,k_proj,v_proj,o_proj), then import the adapter on that version"
        )
    return manifest


def materialize(repo_root: Path, manifest: ReleaseManifest, out: Path) -> Path:
    """Write a release's files under `out` from the repository's chunks, each checked
    against the manifest's hash."""
    for entry in manifest.files:
        target = (out / entry.path).resolve()
        if not target.is_relative_to(out.resolve()):
            raise ReleaseRefused(f"{manifest.model}: file path {entry.path} leaves the folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with target.open("wb") as sink:
            for chunk in entry.chunks:
                data = (repo_root / chunk_path(chunk.sha256)).read_bytes()
                digest.update(data)
                sink.write(data)
        if digest.hexdigest() != entry.sha256:
            raise ReleaseRefused(
                f"{manifest.model} {manifest.version}: {entry.path} rebuilt from the "
                "repository's chunks does not match its manifest; the repository is damaged"
            )
    return out
