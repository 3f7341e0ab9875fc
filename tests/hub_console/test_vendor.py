"""The vendored browser assets are the pinned npm files: each matches its manifest's SHA-256,
carries its package's license, and the console serves them itself (pages name no other host)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx

from hub.console.app import HERE
from tests.hub_console.conftest import Console

FOLDERS = [HERE / "static" / "vendor", Path(__file__).parent / "vendor"]


def test_vendored_files_match_their_manifest() -> None:
    for folder in FOLDERS:
        manifest = json.loads((folder / "MANIFEST.json").read_text())
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert files - {"MANIFEST.json"} == set(manifest), folder
        for name, entry in manifest.items():
            digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            assert digest == entry["sha256"], f"{name} differs: run scripts/vendor-assets"
        packages = {e["package"] for e in manifest.values()}
        for package in packages:
            named = [n for n, e in manifest.items() if e["package"] == package]
            assert any("LICENSE" in n for n in named), f"{package} has no license file"


def test_pages_load_assets_from_the_hub_only(console: Console) -> None:
    olga = console.browser("olga")
    page = olga.get("/console/").text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    assert len(assets) >= 4 and all(a.startswith("/console/static/") for a in assets)
    assert "//" not in "".join(assets)
    for asset in assets:
        served = httpx.get(console.url + asset)
        assert served.status_code == 200 and served.content, asset
