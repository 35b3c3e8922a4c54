"""Time each clusterer on one FFN layer's key vectors at several expert counts. The layers
are a real MiniLM-L6 layer (1,536 x 384) and a layer of BERT-base size (3,072 x 768) with
random weights. Also time the conversion of a model with a cold and a warm cluster cache.

Run: .venv/bin/python benchmarks/clustering.py            (quick: skips the slowest cells)
     .venv/bin/python benchmarks/clustering.py --full
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

CLUSTERERS = ("balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random")
# (layer, clusterer, experts) cells that --quick skips: balanced k-means of the BERT-base
# layer into 64 experts, the slowest cell (10.9 s on a loaded 2-core CPU).
QUICK_SKIPS = (("random_weights", "balanced_kmeans", 64),)


def parse_args(argv: list[str] | None) -> Any:
    parser = harness.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[16, 64], help="Expert counts N.")
    parser.add_argument("--clusterers", nargs="+", default=list(CLUSTERERS), choices=CLUSTERERS)
    parser.add_argument(
        "--random-shape", type=int, nargs=2, default=[3072, 768], metavar=("D_FF", "D"),
        help="Shape of the random-weight layer (BERT-base: 3072 768).",
    )
    parser.add_argument("--repeats", type=int, default=1, help="Timed runs of each cell.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help=f"Skip the cells {QUICK_SKIPS} (default).")
    mode.add_argument("--full", dest="quick", action="store_false", help="Run every cell.")
    parser.add_argument(
        "--blas-threads", type=int, default=0,
        help="Limit BLAS and OpenMP threads of numpy and scikit-learn; 0 keeps their default.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    harness.setup_torch(args.threads)
    record = harness.run_record(args)

    from threadpoolctl import threadpool_info, threadpool_limits

    from emoe_lab.models import load_model

    cfg = harness.compose(harness.base_overrides(args) + ["moe=emoe"])
    model = load_model(cfg.model, 2, Path(cfg.cache_dir))
    layers = key_vector_layers(model, cfg, tuple(args.random_shape), args.seed)

    limits = threadpool_limits(args.blas_threads) if args.blas_threads > 0 else None
    try:
        pools = [{key: pool.get(key) for key in ("user_api", "internal_api", "num_threads")}
                 for pool in threadpool_info()]
        cells = time_cells(args, layers)
        cache = time_cache(args)
    finally:
        if limits is not None:
            limits.restore_original_limits()

    results = record | {
        "settings": {
            "model": cfg.model.name, "experts": args.experts, "quick": args.quick,
            "skipped": [list(cell) for cell in QUICK_SKIPS] if args.quick else [],
            "repeats": args.repeats, "thread_pools": pools,
            "layers": {name: {"shape": list(layer["keys"].shape), "source": layer["source"]}
                       for name, layer in layers.items()},
        },
        "cells": cells,
        "cache": cache,
    }
    harness.write_results("clustering", args, results, render)
    return results


def key_vector_layers(model: Any, cfg: Any, random_shape: tuple[int, int], seed: int) -> dict:
    """Return the key vectors [d_ff, d] of the model's first converted layer and of a random
    layer."""
    import torch

    from emoe_lab.moe import resolve_layers
    from emoe_lab.moe.convert import family_of

    family = family_of(model)
    blocks = family.blocks(model)
    layer = resolve_layers(cfg.moe.layers, len(blocks))[0]
    real = family.key_vectors(blocks[layer]).detach().float().cpu().numpy()
    generator = torch.Generator().manual_seed(seed)
    # NOTE: random N(0, 0.02^2) weights have no cluster structure, so iteration counts and
    # DBSCAN's radius search may differ from those on a trained BERT-base layer.
    random = (torch.randn(random_shape, generator=generator) * 0.02).numpy()
    return {
        "model_layer": {"keys": real, "source": f"{cfg.model.name} layer {layer} W_in (real weights)"},
        "random_weights": {"keys": random, "source": "N(0, 0.02^2) random weights"},
    }


def time_cells(args: Any, layers: dict) -> list[dict]:
    """Cluster every layer with every clusterer at every N, as `convert_model` does on a
    cache miss (L2-normalised float64 rows)."""
    import numpy as np
    from tqdm.auto import tqdm

    from emoe_lab.moe import build_clusterer
    from emoe_lab.moe.clusterers import normalise_rows
    from emoe_lab.moe.convert import EQUAL_SIZE_CLUSTERERS

    plan = [(layer, clusterer, n)
            for layer in layers for n in args.experts for clusterer in args.clusterers]
    clusterers = {name: build_clusterer(harness.compose([f"clusterer={name}"]).clusterer)
                  for name in args.clusterers}
    # Untimed first calls: imports and thread-pool start-up would land in the first cell.
    warmup_keys = normalise_rows(np.random.default_rng(args.seed).standard_normal((64, 8)))
    for clusterer in clusterers.values():
        clusterer.cluster(warmup_keys, 4, args.seed)

    cells = []
    for layer, clusterer_name, num_experts in tqdm(plan, desc="clustering", leave=False):
        keys = layers[layer]["keys"]
        cell: dict[str, Any] = {"layer": layer, "shape": list(keys.shape),
                                "clusterer": clusterer_name, "experts": num_experts}
        if args.quick and (layer, clusterer_name, num_experts) in QUICK_SKIPS:
            cells.append(cell | {"skipped": "--quick"})
            continue
        if clusterer_name in EQUAL_SIZE_CLUSTERERS and keys.shape[0] % num_experts:
            cells.append(cell | {"skipped": f"d_ff={keys.shape[0]} does not divide by N"})
            continue
        clusterer = clusterers[clusterer_name]
        vectors = normalise_rows(keys)
        seconds = []
        for _ in range(args.repeats):
            with harness.Stopwatch() as watch:
                clustering = clusterer.cluster(vectors, num_experts, args.seed)
            seconds.append(watch.seconds)
        sizes = clustering.expert_sizes
        cells.append(cell | {
            "seconds": min(seconds), "seconds_all": seconds, "experts_made": len(sizes),
            "min_size": min(sizes), "max_size": max(sizes), "info": clustering.info,
        })
    return cells


def time_cache(args: Any) -> dict[str, Any]:
    """Convert a freshly loaded model with EMoE's defaults twice into a new cache folder: the
    first convert clusters and writes the cache, the second reads it."""
    from emoe_lab.models import load_model
    from emoe_lab.moe import convert_model

    folder = Path(tempfile.mkdtemp(prefix="emoe_bench_clusters_"))
    try:
        cfg = harness.compose(harness.base_overrides(args) + ["moe=emoe", f"cache_dir={folder}"])
        timings = {}
        for attempt in ("miss", "hit"):
            model = load_model(cfg.model, 2, Path(args.cache_dir))
            with harness.Stopwatch() as watch:
                reports = convert_model(model, cfg.moe, cfg.clusterer, cfg.gating, seed=cfg.seed,
                                        cache_dir=folder)
            timings[attempt] = {
                "convert_seconds": watch.seconds,
                "cache_hits": [report["cache_hit"] for report in reports],
                "layers": [report["layer"] for report in reports],
            }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "clusterer": cfg.clusterer.name, "experts": cfg.moe.num_experts, **timings,
        "speedup": timings["miss"]["convert_seconds"] / timings["hit"]["convert_seconds"],
    }


def render(results: dict[str, Any]) -> str:
    rows = []
    for cell in results["cells"]:
        time_text = cell.get("skipped") or f"{cell['seconds']:.2f}"
        sizes = ""
        if "skipped" not in cell:
            sizes = f"{cell['experts_made']} ({cell['min_size']}..{cell['max_size']})"
        rows.append([f"{cell['layer']} {cell['shape'][0]}x{cell['shape'][1]}", cell["clusterer"],
                     cell["experts"], time_text, sizes])
    cache = results["cache"]
    return "\n".join([
        "Clustering one layer's key vectors (seconds)",
        "",
        harness.format_table(["layer", "clusterer", "N", "seconds", "experts (sizes)"], rows),
        "",
        f"Converting {results['settings']['model']} ({cache['clusterer']}, N={cache['experts']}, "
        f"layers {cache['miss']['layers']}): cache miss {cache['miss']['convert_seconds']:.2f} s, "
        f"cache hit {cache['hit']['convert_seconds']:.3f} s",
    ])


if __name__ == "__main__":
    main()
