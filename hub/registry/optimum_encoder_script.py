"""Run inside the isolated optimum virtual environment (never imported by the hub):
export a Hugging Face encoder folder to ONNX with optimum, then int8-quantize it with
optimum's onnxruntime quantizer. Arguments: SOURCE_DIR OUT_DIR. Prints one JSON line."""

import json
import sys
from pathlib import Path

import optimum.version
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig

source, out = Path(sys.argv[1]), Path(sys.argv[2])
exported = out / "fp32"
ORTModelForFeatureExtraction.from_pretrained(str(source), export=True).save_pretrained(exported)
quantizer = ORTQuantizer.from_pretrained(str(exported))
# Dynamic int8 (weights int8, activations scaled per call): no calibration data needed.
config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
quantizer.quantize(save_dir=str(out / "int8"), quantization_config=config)
(quantized,) = (out / "int8").glob("*.onnx")
print(json.dumps({"model": str(quantized), "optimum": optimum.version.__version__}))
