"""Clusterers on synthetic key vectors with planted groups: labels, sizes, seeds, DBSCAN's
radius search and noise policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_rand_score

from emoe_lab.config import ClustererConfig
from emoe_lab.errors import ConfigError
from emoe_lab.moe.clusterers import CLUSTERERS, build_clusterer, normalise_rows, relabel

CONF = Path(__file__).resolve().parents[1] / "conf"
ALL_CLUSTERERS = ["balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random"]


def clusterer_cfg(option: str, **overrides):
    cfg = OmegaConf.merge(
        OmegaConf.structured(ClustererConfig), OmegaConf.load(CONF / "clusterer" / f"{option}.yaml")
    )
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def planted_keys(groups: int = 4, per_group: int = 16, dim: int = 24, spread: float = 0.05,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors scattered tightly around `groups` random directions, shuffled."""
    rng = np.random.default_rng(seed)
    centres = normalise_rows(rng.normal(size=(groups, dim)))
    truth = np.repeat(np.arange(groups), per_group)
    keys = centres[truth] + spread * rng.normal(size=(len(truth), dim))
    order = rng.permutation(len(truth))
    return normalise_rows(keys[order]), truth[order]


def test_registry_lists_every_option():
    assert sorted(CLUSTERERS) == sorted(ALL_CLUSTERERS)
    for option in ALL_CLUSTERERS:
        assert (CONF / "clusterer" / f"{option}.yaml").exists()


@pytest.mark.parametrize("option", ALL_CLUSTERERS)
def test_labels_cover_every_expert(option):
    keys, _ = planted_keys()
    clustering = build_clusterer(clusterer_cfg(option)).cluster(keys, 4, seed=0)
    assert clustering.labels.shape == (64,)
    assert set(clustering.labels.tolist()) == set(range(clustering.num_experts))
    assert sum(clustering.expert_sizes) == 64
    assert min(clustering.expert_sizes) > 0


@pytest.mark.parametrize("option", ["balanced_kmeans", "kmeans", "hierarchical", "dbscan"])
def test_planted_groups_recovered(option):
    keys, truth = planted_keys()
    clustering = build_clusterer(clusterer_cfg(option)).cluster(keys, 4, seed=0)
    assert adjusted_rand_score(truth, clustering.labels) == pytest.approx(1.0)


@pytest.mark.parametrize("option", ["balanced_kmeans", "random"])
def test_equal_size_clusterers(option):
    keys, _ = planted_keys(groups=3, per_group=20)
    clustering = build_clusterer(clusterer_cfg(option)).cluster(keys, 6, seed=0)
    assert clustering.expert_sizes == [10] * 6


def test_balanced_kmeans_splits_uneven_groups_equally():
    rng = np.random.default_rng(1)
    keys = normalise_rows(rng.normal(size=(48, 16)))
    clustering = build_clusterer(clusterer_cfg("balanced_kmeans")).cluster(keys, 8, seed=0)
    assert clustering.expert_sizes == [6] * 8


@pytest.mark.parametrize("option", ALL_CLUSTERERS)
def test_same_seed_same_labels(option):
    keys, _ = planted_keys(spread=0.4)
    clusterer = build_clusterer(clusterer_cfg(option))
    first = clusterer.cluster(keys, 4, seed=3).labels
    second = clusterer.cluster(keys, 4, seed=3).labels
    np.testing.assert_array_equal(first, second)


def test_random_split_depends_on_seed():
    keys, _ = planted_keys()
    clusterer = build_clusterer(clusterer_cfg("random"))
    first = clusterer.cluster(keys, 4, seed=0).labels
    second = clusterer.cluster(keys, 4, seed=1).labels
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("linkage", ["ward", "average", "complete", "single"])
def test_hierarchical_linkages(linkage):
    keys, truth = planted_keys()
    clustering = build_clusterer(clusterer_cfg("hierarchical", linkage=linkage)).cluster(keys, 4, 0)
    assert adjusted_rand_score(truth, clustering.labels) == pytest.approx(1.0)


def test_relabel_drops_empty_clusters():
    labels = relabel(np.array([7, 2, 7, 9, 2]))
    np.testing.assert_array_equal(labels, [1, 0, 1, 2, 0])


def test_dbscan_search_records_eps():
    keys, _ = planted_keys(groups=5)
    clustering = build_clusterer(clusterer_cfg("dbscan", eps="search")).cluster(keys, 5, seed=0)
    record = clustering.info["dbscan"]
    assert record["eps_searched"] is True
    assert record["eps"] > 0
    assert record["clusters_found"] == 5
    assert record["noise_neurons"] == 0
    assert clustering.num_experts == 5


def with_noise(keys: np.ndarray, count: int, seed: int = 5) -> np.ndarray:
    """Append `count` scattered unit vectors that no dense group claims."""
    rng = np.random.default_rng(seed)
    return np.vstack([keys, normalise_rows(rng.normal(size=(count, keys.shape[1])))])


def test_dbscan_noise_goes_to_nearest_cluster():
    keys, truth = planted_keys()
    keys = with_noise(keys, 6)
    cfg = clusterer_cfg("dbscan", eps=0.2, noise="nearest")
    clustering = build_clusterer(cfg).cluster(keys, 4, seed=0)
    record = clustering.info["dbscan"]
    assert record["noise_neurons"] == 6
    assert record["clusters_found"] == 4
    assert clustering.num_experts == 4
    assert adjusted_rand_score(truth, clustering.labels[:64]) == pytest.approx(1.0)


def test_dbscan_noise_as_extra_expert():
    keys, _ = planted_keys()
    keys = with_noise(keys, 6)
    cfg = clusterer_cfg("dbscan", eps=0.2, noise="extra_expert")
    clustering = build_clusterer(cfg).cluster(keys, 4, seed=0)
    assert clustering.num_experts == 5
    noise_label = clustering.labels[-1]
    assert (clustering.labels[-6:] == noise_label).all()
    assert clustering.expert_sizes[noise_label] == 6


def test_dbscan_without_cluster_raises():
    keys, _ = planted_keys(spread=0.5)
    cfg = clusterer_cfg("dbscan", eps=1e-6, min_samples=5)
    with pytest.raises(ConfigError) as error:
        build_clusterer(cfg).cluster(keys, 4, seed=0)
    message = str(error.value)
    assert "clusterer.eps" in message
    assert "every one of the 64 neurons as noise" in message
    assert "Try eps between" in message
    assert "min_samples" in message


def test_dbscan_search_without_cluster_raises():
    keys, _ = planted_keys()
    cfg = clusterer_cfg("dbscan", eps="search", min_samples=100)
    with pytest.raises(ConfigError, match="clusterer.eps='search'"):
        build_clusterer(cfg).cluster(keys, 4, seed=0)
