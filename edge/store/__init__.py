"""The disk store: the index, the slice files, the transactions, and upkeep.

``index`` (schema, connections, rows), ``files`` (roots, slice paths, staging,
sweeps), ``store`` (``Store``: the transactions), ``upkeep`` (recovery, tidy,
scrub). What the rest of edgefleet uses is named here.
"""

from edge.store.files import (
    ChecksumMismatch,
    NoUsableRoot,
    RootSpec,
    Staged,
    StageFile,
    StoreError,
    checksum,
    is_device_error,
    slice_name,
)
from edge.store.index import Holding, IndexBusy, RootUsage, StoredObject, new_gen
from edge.store.store import DEFAULT_SLICE_SIZE, Store
from edge.store.upkeep import RecoveryReport, ScrubReport

__all__ = [
    "DEFAULT_SLICE_SIZE",
    "ChecksumMismatch",
    "Holding",
    "IndexBusy",
    "NoUsableRoot",
    "RecoveryReport",
    "RootSpec",
    "RootUsage",
    "ScrubReport",
    "StageFile",
    "Staged",
    "Store",
    "StoreError",
    "StoredObject",
    "checksum",
    "is_device_error",
    "new_gen",
    "slice_name",
]
