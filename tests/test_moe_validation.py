"""validate_moe_config: every invalid MoE, clusterer or gating setting raises ConfigError,
naming the key, the value, what is allowed and the fix, before any clustering starts."""

from __future__ import annotations

import pytest
from transformers import RobertaConfig, RobertaForSequenceClassification

from emoe_lab.errors import ConfigError
from emoe_lab.moe import convert_model, moe_layers, validate_moe_config
from helpers import group_cfg, tiny_model_from_conf


@pytest.fixture(scope="module")
def model():
    """Tiny BERT: 4 layers, d_ff 64."""
    return tiny_model_from_conf("bert", num_labels=2)


def raise_for(model, moe=None, clusterer=None, gating=None, clusterer_name="balanced_kmeans",
              gating_name="avg_k") -> str:
    """Run validation with overrides and return the ConfigError message."""
    with pytest.raises(ConfigError) as error:
        validate_moe_config(
            model,
            group_cfg("moe", "emoe", **(moe or {})),
            group_cfg("clusterer", clusterer_name, **(clusterer or {})),
            group_cfg("gating", gating_name, **(gating or {})),
        )
    return str(error.value)


def test_defaults_are_valid(model):
    for clusterer in ["balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random"]:
        for gating in ["avg_k", "learned", "random"]:
            validate_moe_config(
                model, group_cfg("moe", "emoe"), group_cfg("clusterer", clusterer),
                group_cfg("gating", gating),
            )


def test_disabled_moe_skips_checks(model):
    moe = group_cfg("moe", "dense")
    validate_moe_config(model, moe, group_cfg("clusterer", "kmeans"), {"name": "nonsense"})
    assert convert_model(model, moe, None, None, seed=0, cache_dir=None) == []


def test_top_k_above_num_experts(model):
    message = raise_for(model, moe={"num_experts": 4, "top_k": 5})
    assert "moe.top_k=5" in message
    assert "1..4 (moe.num_experts) or 'all'" in message
    assert "Lower moe.top_k" in message


@pytest.mark.parametrize("top_k", [0, -2, "some", 2.5, True])
def test_top_k_invalid(model, top_k):
    message = raise_for(model, moe={"top_k": top_k})
    assert f"moe.top_k={top_k!r}" in message
    assert "or 'all'" in message


def test_top_k_all_is_valid(model):
    validate_moe_config(
        model, group_cfg("moe", "emoe", top_k="all"), group_cfg("clusterer", "kmeans"),
        group_cfg("gating", "avg_k"),
    )


@pytest.mark.parametrize("num_experts", [0, 65])
def test_num_experts_out_of_range(model, num_experts):
    message = raise_for(model, moe={"num_experts": num_experts, "top_k": 1})
    assert f"moe.num_experts={num_experts}" in message
    assert "1..64 (d_ff of this model)" in message


@pytest.mark.parametrize("clusterer", ["balanced_kmeans", "random"])
def test_equal_size_clusterer_needs_divisor(model, clusterer):
    message = raise_for(model, moe={"num_experts": 6, "top_k": 2}, clusterer_name=clusterer)
    assert "moe.num_experts=6" in message
    assert "a divisor of d_ff=64" in message
    assert clusterer in message
    assert "1, 2, 4, 8, 16, 32, 64" in message
    assert "kmeans" in message


def test_unbalanced_clusterer_accepts_any_count(model):
    validate_moe_config(
        model, group_cfg("moe", "emoe", num_experts=6, top_k=2),
        group_cfg("clusterer", "kmeans"), group_cfg("gating", "avg_k"),
    )


@pytest.mark.parametrize("layers", [[4], [-5], [-1, 7]])
def test_layer_out_of_range(model, layers):
    message = raise_for(model, moe={"layers": layers})
    assert "moe.layers" in message
    assert "indices in -4..3 for a model with 4 layers" in message


def test_duplicate_layers_after_normalisation(model):
    message = raise_for(model, moe={"layers": [-1, 3]})
    assert "moe.layers=[-1, 3]" in message
    assert "distinct layers" in message
    assert "layer 3 twice" in message


def test_empty_layers(model):
    message = raise_for(model, moe={"layers": []})
    assert "a non-empty list of layer indices" in message
    assert "moe=dense" in message


def test_unknown_family():
    roberta = RobertaForSequenceClassification(RobertaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=100,
    ))
    message = raise_for(roberta)
    assert "model.config.model_type='roberta'" in message
    assert "bert, gpt2, llama" in message
    assert "moe=dense" in message


def test_unknown_clusterer(model):
    message = raise_for(model, clusterer={"name": "spectral"}, clusterer_name="kmeans")
    assert "clusterer.name='spectral'" in message
    assert "balanced_kmeans, dbscan, hierarchical, kmeans, random" in message


def test_unknown_gating(model):
    message = raise_for(model, gating={"name": "hash"})
    assert "gating.name='hash'" in message
    assert "avg_k, learned, random" in message


def test_invalid_budget(model):
    message = raise_for(model, moe={"budget": "flops"})
    assert "moe.budget='flops'" in message
    assert "experts, neurons" in message


def test_invalid_linkage(model):
    message = raise_for(model, clusterer={"linkage": "median"}, clusterer_name="hierarchical")
    assert "clusterer.linkage='median'" in message
    assert "ward, average, complete, single" in message


@pytest.mark.parametrize("eps", [0, -0.1, "auto"])
def test_invalid_dbscan_eps(model, eps):
    message = raise_for(model, clusterer={"eps": eps}, clusterer_name="dbscan")
    assert f"clusterer.eps={eps!r}" in message
    assert "> 0" in message
    assert "'search'" in message


def test_invalid_dbscan_noise_policy(model):
    message = raise_for(model, clusterer={"noise": "drop"}, clusterer_name="dbscan")
    assert "clusterer.noise='drop'" in message
    assert "nearest, extra_expert" in message


def test_invalid_dbscan_min_samples(model):
    message = raise_for(model, clusterer={"min_samples": 0}, clusterer_name="dbscan")
    assert "clusterer.min_samples=0" in message


@pytest.mark.parametrize("key", ["n_init", "max_iter"])
def test_invalid_kmeans_iterations(model, key):
    message = raise_for(model, clusterer={key: 0}, clusterer_name="kmeans")
    assert f"clusterer.{key}=0" in message


def test_invalid_router_init(model):
    message = raise_for(model, gating={"router_init": "zeros"}, gating_name="learned")
    assert "gating.router_init='zeros'" in message
    assert "centroids, random" in message


@pytest.mark.parametrize("key", ["aux_loss_weight", "noise_std"])
@pytest.mark.parametrize("gating", ["avg_k", "learned"])
def test_negative_gating_weights(model, key, gating):
    message = raise_for(model, gating={key: -0.5}, gating_name=gating)
    assert f"gating.{key}=-0.5" in message
    assert ">= 0" in message


@pytest.mark.parametrize("key", ["aux_loss_weight", "noise_std"])
def test_random_gating_rejects_noise_and_aux_loss(model, key):
    message = raise_for(model, gating={key: 0.1}, gating_name="random")
    assert f"gating.{key}=0.1" in message
    assert "0 for random gating" in message


def test_invalid_seed(model):
    with pytest.raises(ConfigError, match="seed=-1"):
        convert_model(model, group_cfg("moe", "emoe"), group_cfg("clusterer", "random"),
                      group_cfg("gating", "avg_k"), seed=-1, cache_dir=None)


def test_validation_precedes_conversion(model):
    with pytest.raises(ConfigError):
        convert_model(model, group_cfg("moe", "emoe", top_k=99), group_cfg("clusterer", "random"),
                      group_cfg("gating", "avg_k"), seed=0, cache_dir=None)
    assert moe_layers(model) == []
