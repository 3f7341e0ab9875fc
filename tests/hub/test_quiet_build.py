"""`edge-hub testmodel build` says its steps in its own words: no library progress bar
(transformers' "Writing model shards") and no source path after a line (`cli.py:580`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_building_a_test_model_prints_no_foreign_bars_or_paths(tmp_path: Path) -> None:
    env = {**os.environ, "EDGE_TEST_MODEL_CACHE": str(tmp_path), "COLUMNS": "200"}
    result = subprocess.run(
        [str(BIN / "edge-hub"), "testmodel", "build", "tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Writing model shards" not in result.stderr
    assert "cli.py:" not in result.stderr
    assert "built the 'tiny' test model" in result.stderr
