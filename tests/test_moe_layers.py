"""Conversion of tiny random BERT, GPT-2 and Llama models into experts: the k = N invariant,
the neuron permutation, the gatings, the neuron budget, the cluster cache and the routing
statistics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from emoe_lab.errors import ConfigError
from emoe_lab.moe import (
    convert_model,
    moe_aux_loss,
    moe_layers,
    moe_statistics,
    reset_moe_statistics,
    select_experts,
    set_token_mask,
)
from helpers import group_cfg, tiny_model_from_conf

FAMILIES = ["bert", "gpt2", "llama"]
CLUSTERERS = ["balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random"]
D_FF = 64
NUM_EXPERTS = 8



def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    return tiny_model_from_conf(family, num_labels=3, seed=seed).eval()


def token_ids(batch: int = 4, length: int = 9, seed: int = 0) -> torch.Tensor:
    # Ids from 5 up avoid the tiny tokenizer's special tokens, padding included.
    return torch.randint(5, 1000, (batch, length), generator=torch.Generator().manual_seed(seed))


def convert(model, clusterer="balanced_kmeans", gating="avg_k", cache_dir=None, seed=0,
            clusterer_overrides=None, gating_overrides=None, **moe_overrides):
    moe_settings = {"num_experts": NUM_EXPERTS, "top_k": 2, "layers": [-1, -3]} | moe_overrides
    moe_cfg = group_cfg("moe", "emoe", **moe_settings)
    clusterer_cfg = group_cfg("clusterer", clusterer, **(clusterer_overrides or {}))
    gating_cfg = group_cfg("gating", gating, **(gating_overrides or {}))
    return convert_model(model, moe_cfg, clusterer_cfg, gating_cfg, seed=seed, cache_dir=cache_dir)


def logits(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    set_token_mask(model, mask)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def first_moe_layer(model):
    return moe_layers(model)[0]


# --- the k = N invariant and the permutation ------------------------------------------------

@pytest.mark.parametrize("clusterer", CLUSTERERS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("top_k", [NUM_EXPERTS, "all"])
def test_all_experts_reproduce_dense(family, clusterer, top_k, tmp_path):
    dense = tiny_model(family)
    ids = token_ids()
    expected = logits(dense, ids)
    overrides = {"min_samples": 3}
    if clusterer == "dbscan" and top_k != "all":
        # DBSCAN picks its own expert count; top_k = N needs that count first.
        probe = convert(copy.deepcopy(dense), clusterer, top_k="all", layers=[-1],
                        cache_dir=tmp_path, clusterer_overrides=overrides)
        top_k = probe[0]["num_experts"]

    model = copy.deepcopy(dense)
    reports = convert(model, clusterer, top_k=top_k, layers=[-1], cache_dir=tmp_path,
                      clusterer_overrides=overrides)
    other_top_k = "all" if clusterer == "dbscan" else top_k
    reports += convert(model, clusterer, top_k=other_top_k, layers=[-3],
                       clusterer_overrides=overrides)
    model.eval()

    assert [report["layer"] for report in reports] == [3, 1]
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gating", ["avg_k", "random"])
def test_neuron_budget_of_all_reproduces_dense(family, gating):
    dense = tiny_model(family)
    ids = token_ids()
    model = copy.deepcopy(dense)
    convert(model, "kmeans", gating, top_k="all", budget="neurons")
    model.eval()
    torch.testing.assert_close(logits(model, ids), logits(dense, ids), atol=1e-5, rtol=0)


def test_llama_with_mlp_bias_reproduces_dense():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=1000, pad_token_id=0, num_labels=3,
                         mlp_bias=True)
    dense = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        for block in dense.model.layers:
            block.mlp.gate_proj.bias.normal_()
            block.mlp.up_proj.bias.normal_()
    model = copy.deepcopy(dense)
    convert(model, "kmeans", top_k="all", layers=[0, 1])
    ids = token_ids()
    torch.testing.assert_close(logits(model, ids), logits(dense, ids), atol=1e-5, rtol=0)


def ffn_weights(family: str, block) -> dict[str, torch.Tensor]:
    """W_in [d_ff, d], W_out [d, d_ff] and `paired`, the tensor whose rows follow W_in's
    neurons (b_in, or up_proj for Llama), of a block in a common layout."""
    if family == "bert":
        return {"w_in": block.intermediate.dense.weight, "paired": block.intermediate.dense.bias,
                "w_out": block.output.dense.weight}
    if family == "gpt2":
        return {"w_in": block.mlp.c_fc.weight.T, "paired": block.mlp.c_fc.bias,
                "w_out": block.mlp.c_proj.weight.T}
    return {"w_in": block.mlp.gate_proj.weight, "paired": block.mlp.up_proj.weight,
            "w_out": block.mlp.down_proj.weight}


def blocks_of(model):
    base = model.base_model
    return base.encoder.layer if hasattr(base, "encoder") else getattr(base, "h", None) or base.layers


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("clusterer", ["kmeans", "random"])
def test_permutation_is_bijection(family, clusterer):
    dense = tiny_model(family)
    model = copy.deepcopy(dense)
    reports = convert(model, clusterer)

    for report in reports:
        before = ffn_weights(family, blocks_of(dense)[report["layer"]])
        after = ffn_weights(family, blocks_of(model)[report["layer"]])
        matches = (after["w_in"][:, None, :] == before["w_in"][None, :, :]).all(dim=-1)
        assert (matches.sum(dim=1) == 1).all(), "each new neuron is exactly one old neuron"
        assert (matches.sum(dim=0) == 1).all(), "each old neuron appears exactly once"

        order = matches.int().argmax(dim=1)
        torch.testing.assert_close(after["paired"], before["paired"][order], atol=0, rtol=0)
        torch.testing.assert_close(after["w_out"], before["w_out"][:, order], atol=0, rtol=0)
        assert sum(report["expert_sizes"]) == report["d_ff"] == D_FF


@pytest.mark.parametrize("clusterer", CLUSTERERS)
def test_experts_are_contiguous_blocks(clusterer):
    model = tiny_model("bert")
    reports = convert(model, clusterer, clusterer_overrides={"min_samples": 3})
    for layer, report in zip(moe_layers(model)[::-1], reports, strict=True):
        sizes = report["expert_sizes"]
        assert report["num_experts"] == len(sizes)
        assert min(sizes) > 0
        expected = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        torch.testing.assert_close(layer.neuron_expert, expected)


# --- parameters, state dicts, repeated conversion ------------------------------------------

def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("gating", ["avg_k", "random"])
@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_free_gatings_keep_parameters(family, gating):
    dense = tiny_model(family)
    model = copy.deepcopy(dense)
    convert(model, gating=gating)
    assert count_parameters(model) == count_parameters(dense)
    assert list(first_moe_layer(model).gating.parameters()) == []
    assert model.state_dict().keys() == dense.state_dict().keys()


def test_learned_router_adds_one_matrix_per_layer():
    dense = tiny_model("bert")
    model = copy.deepcopy(dense)
    convert(model, gating="learned")
    d_model = dense.config.hidden_size
    assert count_parameters(model) - count_parameters(dense) == 2 * NUM_EXPERTS * d_model


def test_state_dict_round_trip(tmp_path):
    ids = token_ids()
    trained = tiny_model("llama")
    convert(trained, "kmeans", "learned", cache_dir=tmp_path)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))

    restored = tiny_model("llama")
    convert(restored, "kmeans", "learned", cache_dir=tmp_path)
    restored.load_state_dict(trained.state_dict())
    torch.testing.assert_close(logits(restored, ids), logits(trained, ids))


def test_second_conversion_of_layer_raises():
    model = tiny_model("bert")
    convert(model)
    with pytest.raises(ConfigError, match="already converted"):
        convert(model)


# --- avg-k gating ---------------------------------------------------------------------------

@pytest.mark.parametrize("clusterer", ["balanced_kmeans", "kmeans"])
@pytest.mark.parametrize("family", FAMILIES)
def test_avg_k_score_is_mean_preactivation(family, clusterer):
    model = tiny_model(family)
    convert(model, clusterer)
    layer = first_moe_layer(model)
    x = torch.randn(5, 7, model.config.hidden_size)

    scores = layer.gating.scores(x, layer.keys())
    preactivation = x @ layer.keys().T  # [5, 7, d_ff], no bias
    expected = torch.stack(
        [block.mean(dim=-1) for block in preactivation.split(layer.expert_sizes, dim=-1)], dim=-1
    )
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_avg_k_selects_top_scoring_experts():
    model = tiny_model("bert")
    convert(model, top_k=3)
    layer = first_moe_layer(model)
    x = torch.randn(40, model.config.hidden_size)
    routing = layer.gating(x, layer.keys())

    best = layer.gating.scores(x, layer.keys()).topk(3, dim=-1).indices
    expected = torch.zeros_like(routing.selected).scatter_(-1, best, True)
    torch.testing.assert_close(routing.selected, expected)
    torch.testing.assert_close(routing.weights, expected.float())


def test_avg_k_masks_unselected_neurons():
    model = tiny_model("bert")
    convert(model, top_k=2)
    layer = first_moe_layer(model)
    x = torch.randn(6, model.config.hidden_size)
    with torch.no_grad():
        output = layer(x)
        dense = layer.intermediate_act_fn(layer.dense(x))
        selected = layer.gating(x, layer.keys()).selected
    active = selected.repeat_interleave(D_FF // NUM_EXPERTS, dim=-1)
    torch.testing.assert_close(output[active], dense[active])
    assert (output[~active] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_vectors_follow_optimiser_step(family):
    model = tiny_model(family)
    convert(model)
    layer = first_moe_layer(model)
    before = layer.gating.gate_vectors(layer.keys()).detach().clone()

    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(input_ids=token_ids(), labels=torch.tensor([0, 1, 2, 0])).loss
    loss.backward()
    optimiser.step()

    after = layer.gating.gate_vectors(layer.keys())
    assert not torch.allclose(after, before)
    expected = layer.keys().detach().unflatten(0, (NUM_EXPERTS, -1)).mean(dim=1)
    torch.testing.assert_close(after, expected)


def test_avg_k_noise_changes_training_selection():
    model = tiny_model("bert")
    convert(model, gating_overrides={"noise_std": 10.0})
    layer = first_moe_layer(model)
    x = torch.randn(200, model.config.hidden_size)
    layer.gating.eval()
    clean = layer.gating(x, layer.keys()).selected
    layer.gating.train()
    noisy = layer.gating(x, layer.keys()).selected
    assert not torch.equal(clean, noisy)


# --- learned gating -------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_learned_router_gets_gradients(family):
    model = tiny_model(family)
    convert(model, gating="learned")
    model.train()
    model(input_ids=token_ids(), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    for layer in moe_layers(model):
        gradient = layer.gating.router.weight.grad
        assert gradient is not None
        assert gradient.abs().sum() > 0


def test_learned_centroid_init_equals_avg_k_gate():
    model = tiny_model("gpt2")
    convert(model, "kmeans", "learned")
    layer = first_moe_layer(model)
    keys = layer.keys().detach()
    expected = torch.stack([block.mean(dim=0) for block in keys.split(layer.expert_sizes)])
    torch.testing.assert_close(layer.gating.router.weight.detach(), expected)


def test_learned_random_init_is_seeded():
    first, second = tiny_model("bert"), tiny_model("bert")
    convert(first, gating="learned", gating_overrides={"router_init": "random"})
    convert(second, gating="learned", gating_overrides={"router_init": "random"})
    weight = first_moe_layer(first).gating.router.weight
    torch.testing.assert_close(weight, first_moe_layer(second).gating.router.weight)
    assert weight.std().item() == pytest.approx(first.config.initializer_range, rel=0.3)


def test_learned_weights_are_renormalised_softmax():
    model = tiny_model("bert")
    convert(model, gating="learned", top_k=3)
    layer = first_moe_layer(model)
    x = torch.randn(10, model.config.hidden_size)
    routing = layer.gating(x, layer.keys())
    scores = layer.gating.router(x)

    assert (routing.selected.sum(dim=-1) == 3).all()
    torch.testing.assert_close(routing.weights.sum(dim=-1), torch.ones(10))
    assert (routing.weights[~routing.selected] == 0).all()
    top = scores.topk(3, dim=-1)
    torch.testing.assert_close(routing.weights.gather(-1, top.indices), top.values.softmax(dim=-1))


def test_learned_with_neuron_budget():
    model = tiny_model("bert")
    convert(model, "kmeans", "learned", budget="neurons", top_k=3)
    layer = first_moe_layer(model)
    x = torch.randn(50, model.config.hidden_size)
    routing = layer.gating(x, layer.keys())
    expected = select_experts(layer.gating.router(x), 3, "neurons", layer.gating.sizes)

    torch.testing.assert_close(routing.selected, expected)
    torch.testing.assert_close(routing.weights.sum(dim=-1), torch.ones(50))
    assert (routing.weights[~routing.selected] == 0).all()


@pytest.mark.parametrize("noise_std", [0.0, 1.0])
def test_aux_loss_trains_router(noise_std):
    model = tiny_model("bert")
    convert(model, gating="learned",
            gating_overrides={"aux_loss_weight": 0.01, "noise_std": noise_std})
    model.train()
    model(input_ids=token_ids())
    aux = moe_aux_loss(model)
    assert aux is not None
    assert aux.item() >= 0
    aux.backward()
    assert first_moe_layer(model).gating.router.weight.grad.abs().sum() > 0


def test_aux_loss_weighted_sum_of_layers():
    model = tiny_model("bert")
    convert(model, gating="learned", gating_overrides={"aux_loss_weight": 0.5})
    model(input_ids=token_ids())
    expected = sum(0.5 * layer.aux_loss for layer in moe_layers(model))
    torch.testing.assert_close(moe_aux_loss(model), expected)


def test_aux_loss_off_by_default():
    model = tiny_model("bert")
    convert(model, gating="learned")
    model(input_ids=token_ids())
    assert moe_aux_loss(model) is None


def test_aux_loss_zero_for_uniform_routing():
    model = tiny_model("bert")
    convert(model, gating="avg_k", gating_overrides={"aux_loss_weight": 1.0})
    layer = first_moe_layer(model)
    selected = torch.eye(NUM_EXPERTS, dtype=torch.bool)
    scores = torch.zeros(NUM_EXPERTS, NUM_EXPERTS)
    loss = layer.gating.load_balancing_loss(scores, scores, selected, None)
    assert loss.item() == pytest.approx(0.0, abs=1e-8)


def test_aux_loss_positive_for_collapsed_routing():
    model = tiny_model("bert")
    convert(model, gating="avg_k", gating_overrides={"aux_loss_weight": 1.0})
    layer = first_moe_layer(model)
    selected = torch.zeros(NUM_EXPERTS, NUM_EXPERTS, dtype=torch.bool)
    selected[:, 0] = True
    scores = torch.zeros(NUM_EXPERTS, NUM_EXPERTS)
    loss = layer.gating.load_balancing_loss(scores, scores, selected, None)
    # Both terms put all mass on one of E experts: CV^2 = E - 1 each.
    assert loss.item() == pytest.approx(2 * (NUM_EXPERTS - 1), rel=1e-5)


# --- random gating --------------------------------------------------------------------------

def test_random_gating_uniform_selection():
    model = tiny_model("bert")
    convert(model, gating="random", top_k=3)
    layer = first_moe_layer(model)
    layer.gating.train()
    torch.manual_seed(0)
    routing = layer.gating(torch.zeros(4000, model.config.hidden_size), layer.keys())

    assert (routing.selected.sum(dim=-1) == 3).all()
    counts = routing.selected.sum(dim=0).numpy()
    assert chisquare(counts).pvalue > 0.001


def test_random_gating_eval_repeats_exactly():
    model = tiny_model("gpt2")
    convert(model, gating="random")
    ids = token_ids()
    model.eval()
    first = logits(model, ids)
    model.eval()
    second = logits(model, ids)
    torch.testing.assert_close(first, second, atol=0, rtol=0)

    model.train()
    with torch.no_grad():
        model(input_ids=ids)
    model.eval()
    torch.testing.assert_close(logits(model, ids), first, atol=0, rtol=0)


def test_random_gating_training_draws_fresh():
    model = tiny_model("bert")
    convert(model, gating="random")
    layer = first_moe_layer(model)
    layer.gating.train()
    x = torch.zeros(50, model.config.hidden_size)
    first = layer.gating(x, layer.keys()).selected
    second = layer.gating(x, layer.keys()).selected
    assert not torch.equal(first, second)


def test_random_gating_layers_draw_differently():
    model = tiny_model("bert")
    convert(model, gating="random")
    model.eval()
    x = torch.zeros(50, model.config.hidden_size)
    upper, lower = moe_layers(model)
    assert not torch.equal(
        upper.gating(x, upper.keys()).selected, lower.gating(x, lower.keys()).selected
    )


# --- neuron budget --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("sizes", "top_k", "expected"),
    [
        ([4, 4, 1, 9], 2, [True, True, True, False]),  # lands on the budget of 9 exactly
        ([5, 6, 7], 1, [True, False, False]),  # 5 is closer to 6 than 11 is
        ([5, 2, 11], 1, [True, True, False]),  # 7 and 5 tie around 6: the crossing expert is taken
        ([10, 2, 6], 1, [True, False, False]),  # the best expert is taken even beyond the budget
    ],
)
def test_neuron_budget_crossing_rule(sizes, top_k, expected):
    scores = -torch.arange(len(sizes), dtype=torch.float32)[None]  # expert 0 scores best
    selected = select_experts(scores, top_k, "neurons", torch.tensor(sizes))
    assert selected[0].tolist() == expected


def test_neuron_budget_equals_top_k_for_equal_sizes():
    scores = torch.randn(100, 8)
    by_neurons = select_experts(scores, 3, "neurons", torch.full((8,), 6))
    by_experts = select_experts(scores, 3, "experts", torch.full((8,), 6))
    torch.testing.assert_close(by_neurons, by_experts)


def test_neuron_budget_per_token_within_half_an_expert():
    sizes = torch.tensor([3, 5, 8, 12, 2, 9, 14, 11])
    scores = torch.randn(500, 8)
    selected = select_experts(scores, 2, "neurons", sizes)
    active = (selected.float() @ sizes.float())
    budget = 2 * sizes.sum().item() / 8
    single = selected.sum(dim=-1) == 1
    assert ((active - budget).abs()[~single] <= sizes.max() / 2).all()


@pytest.mark.parametrize("clusterer", ["kmeans", "hierarchical"])
def test_neuron_budget_active_fraction(clusterer):
    model = tiny_model("bert")
    reports = convert(model, clusterer, budget="neurons", top_k=2)
    reset_moe_statistics(model)
    logits(model, token_ids(batch=16, length=32))

    for stats, report in zip(moe_statistics(model), reports, strict=True):
        tolerance = max(report["expert_sizes"]) / D_FF
        assert stats["active_fraction"] == pytest.approx(2 / NUM_EXPERTS, abs=tolerance)


# --- statistics and the token mask ----------------------------------------------------------

def test_statistics_count_unpadded_tokens():
    model = tiny_model("bert")
    convert(model, top_k=2)
    ids = token_ids(batch=4, length=10)
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0

    reset_moe_statistics(model)
    logits(model, ids, mask)
    for stats in moe_statistics(model):
        assert stats["tokens"] == 24
        assert stats["active_fraction"] == pytest.approx(2 / NUM_EXPERTS)
        assert sum(stats["expert_load"]) == pytest.approx(2.0)
        assert all(0 <= load <= 1 for load in stats["expert_load"])


def test_statistics_match_selection():
    model = tiny_model("llama")
    convert(model, "kmeans", top_k=3)
    layer = first_moe_layer(model)
    x = torch.randn(2, 30, model.config.hidden_size)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 10:] = 0

    layer.reset_statistics()
    layer.token_mask = mask
    with torch.no_grad():
        layer(x)
        selected = layer.gating(x, layer.keys()).selected[mask.bool()]
    stats = layer.statistics()
    sizes = torch.tensor(layer.expert_sizes, dtype=torch.float32)
    assert stats["tokens"] == 40
    expected_load = selected.float().mean(dim=0)
    np.testing.assert_allclose(stats["expert_load"], expected_load.numpy(), rtol=1e-6)
    expected_active = (selected.float() @ sizes).mean() / D_FF
    assert stats["active_fraction"] == pytest.approx(expected_active.item())


def test_statistics_without_mask_count_all_tokens():
    model = tiny_model("gpt2")
    convert(model)
    reset_moe_statistics(model)
    logits(model, token_ids(batch=3, length=5))
    assert [stats["tokens"] for stats in moe_statistics(model)] == [15, 15]


def test_statistics_reset():
    model = tiny_model("bert")
    convert(model)
    logits(model, token_ids())
    reset_moe_statistics(model)
    stats = moe_statistics(model)[0]
    assert stats["tokens"] == 0
    assert stats["active_fraction"] is None
    assert stats["expert_load"] is None


def test_statistics_across_inference_mode():
    model = tiny_model("bert")
    convert(model)
    with torch.inference_mode():
        reset_moe_statistics(model)
        model(input_ids=token_ids(batch=2, length=5))
    model.train()
    model(input_ids=token_ids(batch=3, length=5)).logits.sum().backward()
    with torch.inference_mode():
        model(input_ids=token_ids(batch=1, length=5))
    assert [stats["tokens"] for stats in moe_statistics(model)] == [30, 30]


def test_statistics_off_graph():
    model = tiny_model("bert")
    convert(model, gating="learned")
    model.train()
    model(input_ids=token_ids())
    layer = first_moe_layer(model)
    assert not layer._expert_tokens.requires_grad
    assert not layer._active_neurons.requires_grad


# --- cluster cache --------------------------------------------------------------------------

def test_cache_hit_on_second_conversion(tmp_path):
    first = convert(tiny_model("bert"), "kmeans", "avg_k", cache_dir=tmp_path)
    second = convert(tiny_model("bert"), "kmeans", "learned", cache_dir=tmp_path)

    assert [report["cache_hit"] for report in first] == [False, False]
    assert [report["cache_hit"] for report in second] == [True, True]
    assert [r["expert_sizes"] for r in first] == [r["expert_sizes"] for r in second]
    assert [r["clustering_seconds"] for r in first] == [r["clustering_seconds"] for r in second]
    assert len(list((tmp_path / "clusters").glob("*.json"))) == 2


@pytest.mark.parametrize(
    "change",
    [{"seed": 1}, {"num_experts": 4}, {"clusterer_overrides": {"n_init": 1}},
     {"model_seed": 1}],
)
def test_cache_miss_when_inputs_change(tmp_path, change):
    convert(tiny_model("bert"), "kmeans", cache_dir=tmp_path)
    change = dict(change)
    model = tiny_model("bert", seed=change.pop("model_seed", 0))
    reports = convert(model, "kmeans", cache_dir=tmp_path, **change)
    assert [report["cache_hit"] for report in reports] == [False, False]


def test_cache_stores_dbscan_record(tmp_path):
    overrides = {"min_samples": 3}
    first = convert(tiny_model("gpt2"), "dbscan", cache_dir=tmp_path, top_k="all",
                    clusterer_overrides=overrides)
    second = convert(tiny_model("gpt2"), "dbscan", cache_dir=tmp_path, top_k="all",
                     clusterer_overrides=overrides)
    assert second[0]["cache_hit"] is True
    assert second[0]["dbscan"] == first[0]["dbscan"]


def test_cache_off_in_config(tmp_path):
    convert(tiny_model("bert"), "kmeans", cache_dir=tmp_path, cache=False)
    assert not (tmp_path / "clusters").exists()


def test_unreadable_cache_entry_is_recomputed(tmp_path):
    convert(tiny_model("bert"), "kmeans", cache_dir=tmp_path)
    for entry in (tmp_path / "clusters").glob("*.json"):
        entry.write_text("{not json")
    reports = convert(tiny_model("bert"), "kmeans", cache_dir=tmp_path)
    assert [report["cache_hit"] for report in reports] == [False, False]


# --- DBSCAN through the converter -----------------------------------------------------------

def test_dbscan_report_records_search():
    reports = convert(tiny_model("bert"), "dbscan", top_k="all",
                      clusterer_overrides={"min_samples": 3})
    record = reports[0]["dbscan"]
    assert record["eps"] > 0
    assert record["clusters_found"] >= 1
    assert record["noise_neurons"] >= 0
    assert reports[0]["num_experts"] == len(reports[0]["expert_sizes"])


def test_dbscan_without_cluster_raises_in_conversion():
    with pytest.raises(ConfigError, match="every one of the 64 neurons as noise"):
        convert(tiny_model("bert"), "dbscan", clusterer_overrides={"eps": 1e-6})


def test_top_k_beyond_dbscan_clusters_raises():
    overrides = {"eps": 0.9, "min_samples": 3}
    with pytest.raises(ConfigError, match="moe.top_k") as error:
        convert(tiny_model("bert"), "dbscan", top_k=NUM_EXPERTS, clusterer_overrides=overrides)
    assert "top_k=all" in str(error.value)
