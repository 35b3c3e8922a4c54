"""Clusterers that split the neurons of one FFN layer into experts by their key vectors.

Each clusterer is registered under its `clusterer` config option name. It takes the
L2-normalised key vectors `[d_ff, d]` and returns one expert label per neuron, relabelled to
0..E-1 so that no expert is empty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

CLUSTERERS: dict[str, type[Clusterer]] = {}

LINKAGES = ("ward", "average", "complete", "single")
NOISE_POLICIES = ("nearest", "extra_expert")


@dataclass
class Clustering:
    labels: np.ndarray  # [d_ff] int64, expert of each neuron, every value in 0..E-1 used
    info: dict[str, Any] = field(default_factory=dict)  # clusterer-specific record, JSON-safe

    @property
    def num_experts(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def expert_sizes(self) -> list[int]:
        return np.bincount(self.labels).tolist()


def register(cls: type[Clusterer]) -> type[Clusterer]:
    CLUSTERERS[cls.name] = cls
    return cls


def build_clusterer(cfg: Any) -> Clusterer:
    """Build the clusterer named by `cfg.name` from its config group."""
    if cfg.name not in CLUSTERERS:
        raise ConfigError(
            "clusterer.name", cfg.name, f"one of {', '.join(sorted(CLUSTERERS))}",
            "Pick an option of the clusterer config group.",
        )
    return CLUSTERERS[cfg.name](cfg)


def normalise_rows(keys: np.ndarray) -> np.ndarray:
    """L2-normalise each key vector; an all-zero row stays zero."""
    keys = np.asarray(keys, dtype=np.float64)
    norms = np.linalg.norm(keys, axis=1, keepdims=True)
    return keys / np.maximum(norms, 1e-12)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Map the labels in use to 0..E-1 in increasing order, dropping empty clusters."""
    _, dense = np.unique(labels, return_inverse=True)
    return dense.astype(np.int64).reshape(-1)


class Clusterer:
    """Base class. `params` lists the config fields that change the result: they go into
    the cache key and the run record."""

    name: ClassVar[str]
    params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any) -> None:
        self.settings = {param: getattr(cfg, param) for param in self.params}

    def cluster(self, keys: np.ndarray, num_experts: int, seed: int) -> Clustering:
        """Cluster normalised key vectors [d_ff, d] into about `num_experts` experts."""
        raise NotImplementedError


@register
class BalancedKMeans(Clusterer):
    """EMoE's choice: k-means with every cluster exactly d_ff / num_experts neurons."""

    name = "balanced_kmeans"
    params = ("n_init", "max_iter")

    def cluster(self, keys: np.ndarray, num_experts: int, seed: int) -> Clustering:
        from k_means_constrained import KMeansConstrained

        size = keys.shape[0] // num_experts
        model = KMeansConstrained(
            n_clusters=num_experts, size_min=size, size_max=size, random_state=seed,
            n_init=self.settings["n_init"], max_iter=self.settings["max_iter"],
        )
        return Clustering(relabel(model.fit_predict(keys)))


@register
class KMeans(Clusterer):
    """Plain k-means (scikit-learn); cluster sizes are unconstrained."""

    name = "kmeans"
    params = ("n_init", "max_iter")

    def cluster(self, keys: np.ndarray, num_experts: int, seed: int) -> Clustering:
        from sklearn.cluster import KMeans as SklearnKMeans

        model = SklearnKMeans(
            n_clusters=num_experts, random_state=seed,
            n_init=self.settings["n_init"], max_iter=self.settings["max_iter"],
        )
        return Clustering(relabel(model.fit_predict(keys)))


@register
class Hierarchical(Clusterer):
    """Agglomerative clustering (scikit-learn). Ward linkage works on Euclidean distance,
    which on unit vectors is a monotone function of cosine distance; the other linkages
    use cosine distance directly. Deterministic, so the seed is unused."""

    name = "hierarchical"
    params = ("linkage",)

    def cluster(self, keys: np.ndarray, num_experts: int, seed: int) -> Clustering:
        from sklearn.cluster import AgglomerativeClustering

        linkage = self.settings["linkage"]
        metric = "euclidean" if linkage == "ward" else "cosine"
        model = AgglomerativeClustering(n_clusters=num_experts, linkage=linkage, metric=metric)
        return Clustering(relabel(model.fit_predict(keys)))


@register
class RandomSplit(Clusterer):
    """Control: a seeded random permutation of the neurons cut into equal blocks."""

    name = "random"

    def cluster(self, keys: np.ndarray, num_experts: int, seed: int) -> Clustering:
        d_ff = keys.shape[0]
        labels = np.empty(d_ff, dtype=np.int64)
        labels[np.random.default_rng(seed).permutation(d_ff)] = np.arange(d_ff) // (
            d_ff // num_experts
        )
        return Clustering(labels)


@register
class Dbscan(Clusterer):
    """DBSCAN (scikit-learn) on cosine distance.

    `eps="search"` tries radii at quantiles of each neuron's distance to its
    `min_samples`-th nearest neighbour, then a finer grid around the best one. It keeps the
    radius whose cluster count is closest to `num_experts`, breaking ties by fewer noise
    neurons, then by the smaller radius. Noise neurons go to the cluster with the closest normalised
    centroid (`noise="nearest"`) or form one more expert (`noise="extra_expert"`).
    """

    name = "dbscan"
    params = ("eps", "min_samples", "noise")

    coarse_grid = 40  # quantiles of the neighbour distances tried first
    fine_grid = 20  # radii tried between the neighbours of the best coarse radius

    def cluster(self, keys: np.ndarray, num_experts: int, seed: int) -> Clustering:
        min_samples = self.settings["min_samples"]
        distances = cosine_distances(keys)
        neighbour_distance = np.sort(distances, axis=1)[:, min(min_samples, len(keys)) - 1]

        searched = self.settings["eps"] == "search"
        if searched:
            eps = self._search_eps(distances, neighbour_distance, num_experts)
        else:
            eps = float(self.settings["eps"])
        labels = _dbscan_labels(distances, eps, min_samples)

        clusters_found = int(labels.max()) + 1
        noise = labels < 0
        if clusters_found == 0:
            low, high = np.quantile(neighbour_distance, [0.1, 0.9])
            raise ConfigError(
                "clusterer.eps", self.settings["eps"],
                f"a radius that leaves at least one DBSCAN cluster, but eps={eps:.4g} with "
                f"min_samples={min_samples} marks every one of the {len(keys)} neurons as noise",
                f"Try eps between {low:.3g} and {high:.3g} (the 10% and 90% quantiles of the "
                f"cosine distance to each neuron's {min_samples}th nearest neighbour), "
                + ("" if searched else "eps=search, ")
                + "or a smaller clusterer.min_samples.",
            )

        if noise.any():
            if self.settings["noise"] == "nearest":
                labels[noise] = _nearest_centroid(keys, labels)
            else:
                labels[noise] = clusters_found

        info = {
            "dbscan": {
                "eps": eps,
                "eps_searched": searched,
                "min_samples": min_samples,
                "clusters_found": clusters_found,
                "noise_neurons": int(noise.sum()),
                "noise_policy": self.settings["noise"],
            }
        }
        return Clustering(relabel(labels), info)

    def _search_eps(
        self, distances: np.ndarray, neighbour_distance: np.ndarray, num_experts: int
    ) -> float:
        min_samples = self.settings["min_samples"]
        coarse = np.unique(np.quantile(neighbour_distance, np.linspace(0.01, 0.99, self.coarse_grid)))
        coarse = coarse[coarse > 0]
        if len(coarse) == 0:
            coarse = np.array([1e-6])

        def rank(eps: float) -> tuple[float, int, float]:
            labels = _dbscan_labels(distances, eps, min_samples)
            clusters = int(labels.max()) + 1
            miss = abs(clusters - num_experts) if clusters > 0 else float("inf")
            return miss, int((labels < 0).sum()), eps

        best = min(rank(eps) for eps in coarse)
        position = int(np.searchsorted(coarse, best[2]))
        low = coarse[max(position - 1, 0)]
        high = coarse[min(position + 1, len(coarse) - 1)]
        fine = np.linspace(low, high, self.fine_grid)
        best = min([best, *(rank(eps) for eps in fine)])
        log.debug("DBSCAN eps search: eps=%.4g, |clusters - target|=%s", best[2], best[0])
        return float(best[2])


def cosine_distances(keys: np.ndarray) -> np.ndarray:
    """Cosine distance matrix [d_ff, d_ff] of unit-norm rows, clipped to [0, 2]."""
    distances = 1.0 - keys @ keys.T
    np.clip(distances, 0.0, 2.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


def _dbscan_labels(distances: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    # The precomputed cosine distances give the same clusters as metric="cosine" and are
    # computed once for the whole eps search.
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distances)


def _nearest_centroid(keys: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Label of the closest normalised cluster centroid for each noise point (label -1)."""
    clusters = int(labels.max()) + 1
    member = labels >= 0
    centroids = np.zeros((clusters, keys.shape[1]))
    np.add.at(centroids, labels[member], keys[member])
    centroids = normalise_rows(centroids)
    return np.argmax(keys[~member] @ centroids.T, axis=1)
