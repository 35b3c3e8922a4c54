"""On-disk cache of cluster labels, so that runs that differ only in gating or training
settings cluster each layer once.

An entry is `<cache_dir>/clusters/<key>.json` holding the labels, the clusterer's record and
the seconds the clustering took. The key hashes the layer's key-vector bytes, shape and
dtype, the layer index, the clusterer name and settings, num_experts and the seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..results import atomic_write_text
from .clusterers import Clustering

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when labels for the same key would change


def cache_key(
    keys: torch.Tensor, layer: int, clusterer: str, settings: dict[str, Any],
    num_experts: int, seed: int,
) -> str:
    """SHA-256 hex digest identifying one layer's clustering."""
    digest = hashlib.sha256()
    tensor = keys.detach().cpu().contiguous()
    header = {
        "version": CACHE_VERSION,
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype),
        "layer": layer,
        "clusterer": clusterer,
        "settings": settings,
        "num_experts": num_experts,
        "seed": seed,
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "clusters" / f"{key}.json"


def load_clustering(cache_dir: Path, key: str) -> tuple[Clustering, float] | None:
    """Load a cached clustering and the seconds it took to compute; None on a miss.
    An unreadable entry counts as a miss and is logged."""
    path = cache_path(cache_dir, key)
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
        labels = np.asarray(entry["labels"], dtype=np.int64)
        return Clustering(labels, entry["info"]), float(entry["seconds"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("Ignoring unreadable cluster cache entry %s: %s", path, error)
        return None


def save_clustering(cache_dir: Path, key: str, clustering: Clustering, seconds: float) -> Path:
    """Write an entry atomically (temporary file, then rename), so that parallel jobs
    never read half a file."""
    path = cache_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"labels": clustering.labels.tolist(), "info": clustering.info, "seconds": seconds}
    atomic_write_text(path, json.dumps(entry))
    return path
