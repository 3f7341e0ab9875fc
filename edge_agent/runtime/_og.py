"""The one place that imports onnxruntime-genai.

Our privacy promise depends on no library phoning home: the opt-out must be in the
environment before the native library loads, so every other module imports `og` from here.
"""

from __future__ import annotations

import os

os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import onnxruntime_genai as og

if hasattr(og, "disable_telemetry_events"):
    og.disable_telemetry_events()

__all__ = ["og"]
