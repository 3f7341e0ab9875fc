"""llama.cpp's llama-server and a synthetic model as GGUF Q4_0: the reference for
bench/conversation.py, built as NOTES.md says and cached outside the repository.

    .venv/bin/python bench/llama_reference.py [--model small|tiny]

Steps, each skipped when its result exists under ~/.cache/edge-fleet/llama.cpp: the
llama-cpp-python sdist (pip download), whose vendored llama.cpp builds `llama-server` and
`llama-quantize` with cmake + ninja at the lowest priority (10-15 minutes on 2 cores); the
model's Hugging Face folder, written again from its recipe (same seed, same tokenizer, so
the same weights as the ONNX model); `convert_hf_to_gguf.py` (its pre-tokenizer check does
not know a locally trained tokenizer: it falls back to "smollm", digits split and GPT-2's
byte-level regex, which is what ours uses); then Q4_0. Needs `sentencepiece` and the hub
extra (torch, transformers). Prints the paths to pass to conversation.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path.home() / ".cache" / "edge-fleet" / "llama.cpp"
SOURCE = CACHE / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
BUILD = CACHE / "build"
SERVER = BUILD / "bin" / "llama-server"
QUANTIZE = BUILD / "bin" / "llama-quantize"


def run(command: list[str], log: Path) -> None:
    with log.open("wb") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed; see {log}")


def build_server() -> None:
    if SERVER.is_file() and QUANTIZE.is_file():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        run([*pip, f"llama-cpp-python=={VERSION}", "-d", str(CACHE)], CACHE / "download.log")
    if not SOURCE.is_dir():
        with tarfile.open(sdist) as archive:
            archive.extractall(CACHE, filter="data")
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF"]
    flags += ["-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    nice = ["nice", "-n", "19"]  # the machine is shared: the build yields to everyone
    run(
        [*nice, "cmake", "-S", str(SOURCE), "-B", str(BUILD), "-G", "Ninja", *flags],
        CACHE / "cmake.log",
    )
    run(
        [*nice, "ninja", "-C", str(BUILD), "-j2", "llama-server", "llama-quantize"],
        CACHE / "ninja.log",
    )


def convert(model: str) -> Path:
    gguf = CACHE / f"{model}-Q4_0.gguf"
    if gguf.is_file():
        return gguf
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from hub.registry import synthetic

    recipe = synthetic.RECIPES[model]
    hf_dir = CACHE / f"hf-{model}-{recipe.digest()}"
    if not (hf_dir / "config.json").is_file():
        synthetic.write_tokenizer(recipe, hf_dir)
        synthetic.write_random_weights(recipe, hf_dir)
    f16 = CACHE / f"{model}-f16.gguf"
    script = (
        "import sys, runpy\n"
        f"sys.path.insert(0, {str(SOURCE)!r})\n"
        "from conversion.base import TextModel\n"
        "original = TextModel.get_vocab_base_pre\n"
        "def fallback(self, tokenizer):\n"
        "    try:\n"
        "        return original(self, tokenizer)\n"
        "    except NotImplementedError:\n"
        "        return 'smollm'\n"
        "TextModel.get_vocab_base_pre = fallback\n"
        f"sys.argv = ['convert', {str(hf_dir)!r}, '--outfile', {str(f16)!r}, '--outtype', 'f16']\n"
        f"runpy.run_path({str(SOURCE / 'convert_hf_to_gguf.py')!r}, run_name='__main__')\n"
    )
    if not f16.is_file():
        run([sys.executable, "-c", script], CACHE / f"convert-{model}.log")
    run([str(QUANTIZE), str(f16), str(gguf), "Q4_0"], CACHE / f"quantize-{model}.log")
    f16.unlink()
    return gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    args = parser.parse_args()
    build_server()
    gguf = convert(args.model)
    print(f"--llama-server {SERVER} --gguf {gguf}")


if __name__ == "__main__":
    main()
