"""Release manifests: the files of one model version and the chunks that make each file.

Unknown fields are kept (a newer hub may add some; an older agent must pass them on
untouched), every schema carries its version, and everything that names a path or a
size is checked here, before any byte is written.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from packaging.version import Version
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from edge_agent.protocol.fields import ModelName, ReleaseVersion, Sha256Hex

MANIFEST_SCHEMA_VERSION = 1
MAX_FILES = 256
MAX_FILE_BYTES = 64 << 30
MAX_CHUNK_BYTES = 16 << 20


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ChunkRef(_Wire):
    sha256: Sha256Hex
    size: int = Field(gt=0, le=MAX_CHUNK_BYTES)


class FileEntry(_Wire):
    path: str
    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: Sha256Hex
    chunks: tuple[ChunkRef, ...]

    @field_validator("path")
    @classmethod
    def _relative_and_inside(cls, value: str) -> str:
        pure = PurePosixPath(value)
        if (
            not value
            or pure.is_absolute()
            or any(part in ("", ".", "..") for part in value.split("/"))
            or "\\" in value
            or "\x00" in value
        ):
            raise ValueError(f"file path {value!r} must be relative and stay inside the model")
        return value

    @model_validator(mode="after")
    def _chunks_cover_the_file(self) -> FileEntry:
        total = sum(chunk.size for chunk in self.chunks)
        if total != self.size:
            raise ValueError(f"chunks of {self.path} add up to {total} bytes, not {self.size}")
        return self


class Requirements(_Wire):
    runtime: str = "onnxruntime-genai"
    min_runtime_version: str = "0.18.0"
    execution_providers: tuple[str, ...] = ("cpu",)


class ReleaseManifest(_Wire):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    model: ModelName
    version: ReleaseVersion
    files: tuple[FileEntry, ...] = Field(min_length=1, max_length=MAX_FILES)
    requirements: Requirements = Requirements()
    quantization: dict[str, Any] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value > MANIFEST_SCHEMA_VERSION:
            raise ValueError(
                f"schema version {value} is newer than this agent understands "
                f"({MANIFEST_SCHEMA_VERSION}); update the agent first"
            )
        return value

    @model_validator(mode="after")
    def _unique_paths(self) -> ReleaseManifest:
        paths = [entry.path for entry in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file path appears twice")
        for path in paths:
            if any(other.startswith(path + "/") for other in paths):
                raise ValueError(f"{path} is both a file and a folder")
        return self

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def unique_chunks(self) -> dict[str, int]:
        """Every distinct chunk hash with its size."""
        return {c.sha256: c.size for entry in self.files for c in entry.chunks}


class ReleaseIndex(_Wire):
    """The signed list of every model's releases, so an agent can find the newest."""

    schema_version: int = 1
    models: dict[str, dict[str, str]] = Field(default_factory=dict)  # model -> version -> target

    def versions(self, model: str) -> list[str]:
        return sorted(self.models.get(model, {}), key=Version)

    def latest(self, model: str) -> str | None:
        found = self.versions(model)
        return found[-1] if found else None
