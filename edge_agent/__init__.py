"""The edge agent: offline inference for ONNX-quantized small language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-fleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
