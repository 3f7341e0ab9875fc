"""The one definition of what crosses the wire: release manifests and repository layout.

No I/O here. The hub, provisioning and the agent all import it.
"""

from edge_agent.protocol.layout import (
    CHUNKS_DIR,
    INDEX_TARGET,
    METADATA_DIR,
    SERVED_DIRS,
    TARGETS_DIR,
    chunk_path,
    manifest_target,
    target_file,
)
from edge_agent.protocol.release import (
    MANIFEST_SCHEMA_VERSION,
    MAX_CHUNK_BYTES,
    MAX_FILE_BYTES,
    MAX_FILES,
    ChunkRef,
    FileEntry,
    ReleaseIndex,
    ReleaseManifest,
    Requirements,
)

__all__ = [
    "CHUNKS_DIR",
    "INDEX_TARGET",
    "MANIFEST_SCHEMA_VERSION",
    "MAX_CHUNK_BYTES",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "METADATA_DIR",
    "SERVED_DIRS",
    "TARGETS_DIR",
    "ChunkRef",
    "FileEntry",
    "ReleaseIndex",
    "ReleaseManifest",
    "Requirements",
    "chunk_path",
    "manifest_target",
    "target_file",
]
