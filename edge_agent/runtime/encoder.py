"""A sentence encoder for /v1/embeddings: an int8 ONNX graph run by onnxruntime.

The folder's embeddings.json (written by the hub's import) says how to pool the last
hidden state (mean over real tokens, or the first token) and whether to normalise.
Each input runs on its own: int8 dynamic quantization scales activations per tensor,
so in a padded batch a neighbour shifts an input's vector (measured on the test encoder:
components moved by up to 2e-4), and the same text must embed the same alone or in a
batch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]
from tokenizers import Tokenizer

from edge_agent.runtime.errors import InvalidRequest, ModelLoadError
from edge_agent.runtime.machine import usable_cores

EMBEDDINGS_CONFIG = "embeddings.json"


def is_encoder_folder(folder: Path) -> bool:
    return (folder / EMBEDDINGS_CONFIG).is_file()


@dataclass(frozen=True)
class EncoderConfig:
    model_file: str
    tokenizer_file: str
    pooling: str  # "mean" or "cls"
    normalize: bool
    dimensions: int
    max_input_tokens: int
    matryoshka: bool

    @classmethod
    def read(cls, folder: Path) -> EncoderConfig:
        try:
            raw = json.loads((folder / EMBEDDINGS_CONFIG).read_text())
            config = cls(**{name: raw[name] for name in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"{folder / EMBEDDINGS_CONFIG} is unreadable or incomplete ({exc}); "
                "reinstall the release"
            ) from exc
        if config.pooling not in ("mean", "cls"):
            raise ModelLoadError(f"{folder}: unknown pooling '{config.pooling}' (mean or cls)")
        return config


class Encoder:
    def __init__(self, name: str, folder: Path, threads: int = 0) -> None:
        self.name = name
        self.folder = folder.resolve()
        self.config = EncoderConfig.read(self.folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        try:
            self.session = ort.InferenceSession(
                str(self.folder / self.config.model_file),
                options,
                providers=["CPUExecutionProvider"],
            )
            self.tokenizer = Tokenizer.from_file(str(self.folder / self.config.tokenizer_file))
        except Exception as exc:  # onnxruntime and tokenizers raise their own kinds
            raise ModelLoadError(f"could not load the encoder in {self.folder}: {exc}") from exc
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.inputs = {i.name for i in self.session.get_inputs()}

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per input; an input longer than the model takes is the caller's error."""
        ids = [list(e.ids) for e in self.tokenizer.encode_batch(texts)]
        for index, row in enumerate(ids):
            if len(row) > self.config.max_input_tokens:
                raise InvalidRequest(
                    "input",
                    f"input {index} is {len(row)} tokens long; this model takes at most "
                    f"{self.config.max_input_tokens}: split the text into shorter passages",
                    code="context_length_exceeded",
                )
        return ids

    def embed(self, ids: list[list[int]], dimensions: int | None = None) -> npt.NDArray[np.float32]:
        """One vector per input, pooled and normalised as the model's config says."""
        if dimensions is not None:
            self.check_dimensions(dimensions)
        vectors = np.stack([self._one(row) for row in ids])
        if dimensions is not None and dimensions != self.config.dimensions:
            vectors = vectors[:, :dimensions]
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def check_dimensions(self, dimensions: int) -> None:
        full = self.config.dimensions
        if dimensions == full:
            return
        if not self.config.matryoshka:
            raise InvalidRequest(
                "dimensions",
                f"this model gives {full}-dimensional vectors and was not trained to be "
                f"shortened; omit dimensions or ask for {full}",
            )
        if not 1 <= dimensions < full:
            raise InvalidRequest("dimensions", f"dimensions must be between 1 and {full}")

    def _one(self, row: list[int]) -> npt.NDArray[np.float32]:
        ids = np.asarray([row], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0][0]  # (tokens, hidden)
        pooled = hidden[0] if self.config.pooling == "cls" else hidden.mean(axis=0)
        vector: npt.NDArray[np.float32] = np.asarray(pooled, dtype=np.float32)
        if self.config.normalize:
            vector /= max(float(np.linalg.norm(vector)), 1e-12)
        return vector


class MemoryBudget(Protocol):
    """Where a loaded encoder's memory is counted (the model pool's budget)."""

    def reserve(self, name: str, folder: Path) -> None: ...

    def unreserve(self, name: str) -> None: ...


class Encoders:
    """The installed encoders, each loaded on first use and kept (they are small), counted
    in `budget` when one is given."""

    def __init__(self, discover: Callable[[], dict[str, Path]], threads: int = 0) -> None:
        self.discover = discover
        self.threads = threads
        self.budget: MemoryBudget | None = None
        self._loaded: dict[str, Encoder] = {}
        self._lock = threading.Lock()

    def known(self) -> dict[str, Path]:
        return self.discover()

    def get(self, name: str) -> Encoder | None:
        """The encoder, loaded in this thread if need be; None when no such encoder."""
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            folder = self.known().get(name)
            if folder is None:
                return None
            if self.budget is not None:
                self.budget.reserve(name, folder)  # NotReady when it does not fit
            try:
                self._loaded[name] = Encoder(name, folder, self.threads)
            except BaseException:
                if self.budget is not None:
                    self.budget.unreserve(name)
                raise
            return self._loaded[name]
