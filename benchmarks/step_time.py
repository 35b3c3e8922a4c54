"""Time a training step (forward, backward, AdamW step) of dense fine-tuning against the
expert-layer variants on real batches, and one converted FFN layer alone to explain the gap.

Run: .venv/bin/python benchmarks/step_time.py            (MiniLM-L6, Rotten Tomatoes)
     .venv/bin/python benchmarks/step_time.py --rounds 20 --layer-rounds 60
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

# Variant name -> overrides on top of the model and task. balanced_kmeans + avg_k is EMoE.
VARIANTS: dict[str, list[str]] = {
    "dense": ["moe=dense"],
    "balanced_kmeans+avg_k": ["moe=emoe", "clusterer=balanced_kmeans", "gating=avg_k"],
    "balanced_kmeans+learned": ["moe=emoe", "clusterer=balanced_kmeans", "gating=learned"],
    "balanced_kmeans+random": ["moe=emoe", "clusterer=balanced_kmeans", "gating=random"],
    "kmeans+avg_k": ["moe=emoe", "clusterer=kmeans", "gating=avg_k"],
}
# EMoE with the routing counters off, to price the statistics recorded in training.
NO_STATISTICS = "balanced_kmeans+avg_k, no statistics"
GOAL_RATIO = 1.05


def parse_args(argv: list[str] | None) -> Any:
    parser = harness.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="Training batch size.")
    parser.add_argument("--max-length", type=int, default=64, help="Tokens per example at most.")
    parser.add_argument("--rounds", type=int, default=6, help="Timed steps per variant.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per variant first.")
    parser.add_argument(
        "--layer-rounds", type=int, default=20,
        help="Timed forward+backward passes per variant of one FFN layer alone; 0 skips them.",
    )
    parser.add_argument("--layer-warmup", type=int, default=3, help="Untimed layer passes first.")
    parser.add_argument(
        "--profile-passes", type=int, default=3,
        help="Layer passes per variant run under torch.profiler to list the costliest operators; "
        "0 skips the profile.",
    )
    parser.add_argument(
        "--variants", nargs="+", default=[*VARIANTS, NO_STATISTICS],
        help=f"Variants to time (dense is always included): {', '.join([*VARIANTS, NO_STATISTICS])}.",
    )
    parser.add_argument("--steps", type=int, default=None, help="Alias of --rounds.")
    args = parser.parse_args(argv)
    if args.steps is not None:
        args.rounds = args.steps
    unknown = set(args.variants) - {*VARIANTS, NO_STATISTICS}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {[*VARIANTS, NO_STATISTICS]}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    harness.setup_torch(args.threads)
    record = harness.run_record(args)

    import torch

    from emoe_lab.data import load_task, make_collator
    from emoe_lab.models import load_tokenizer

    base = harness.base_overrides(args) + [
        f"train.batch_size={args.batch_size}", f"model.max_length={args.max_length}",
    ]
    cfg = harness.compose(base)
    cache_dir = Path(cfg.cache_dir)
    tokenizer = load_tokenizer(cfg.model, cache_dir)
    task = load_task(cfg.task, tokenizer, cfg.model.max_length, cache_dir)
    batches = real_batches(task.train, make_collator(tokenizer), args.batch_size,
                           args.warmup + args.rounds, args.seed)

    names = ["dense", *[name for name in args.variants if name != "dense"]]
    jobs = {name: TrainingJob(base, name, task, args.warmup + args.rounds) for name in names}
    layers = converted_layers(jobs)

    def step(name: str) -> Any:
        return lambda round_index: jobs[name].step(batches[round_index])

    step_times = harness.interleave({name: step(name) for name in names}, args.rounds, args.warmup,
                                    desc="training steps")
    step_summary = harness.summarise(step_times, baseline="dense")

    layer_summary: dict[str, dict] = {}
    if args.layer_rounds > 0:
        layer_input = capture_layer_input(jobs["dense"].model, batches[0], layers[0])
        layer_times = harness.interleave(
            {name: jobs[name].layer_pass(layers[0], layer_input) for name in names},
            args.layer_rounds, args.layer_warmup, desc="layer passes",
        )
        layer_summary = harness.summarise(layer_times, baseline="dense")
        for clock in ("", "cpu_"):
            dense_step = step_summary["dense"][f"{clock}median_s"]
            dense_layer = layer_summary["dense"][f"{clock}median_s"]
            for entry in layer_summary.values():
                # From the paired ratio, which drifts less than a difference of medians.
                extra = (entry[f"{clock}ratio_median"] - 1) * dense_layer
                entry[f"{clock}extra_ms_per_layer"] = extra * 1e3
                # The share of a dense step that the extra time of every converted layer adds.
                entry[f"{clock}predicted_step_ratio"] = 1 + extra * len(layers) / dense_step

    profiles = {}
    if args.layer_rounds > 0 and args.profile_passes > 0:
        profiles = {name: profile_operators(jobs[name].layer_pass(layers[0], layer_input),
                                            args.profile_passes)
                    for name in names}

    results = record | {
        "settings": {
            "model": cfg.model.name, "task": cfg.task.name, "batch_size": args.batch_size,
            "max_length": args.max_length, "rounds": args.rounds, "warmup": args.warmup,
            "layer_rounds": args.layer_rounds, "num_experts": jobs[names[-1]].cfg.moe.num_experts,
            "top_k": jobs[names[-1]].cfg.moe.top_k, "converted_layers": layers,
            "device": "cpu", "torch_threads": torch.get_num_threads(),
        },
        "batch_shapes": [list(batch["input_ids"].shape) for batch in batches],
        "expert_sizes": {name: job.expert_sizes for name, job in jobs.items()},
        "step": step_summary,
        "layer": layer_summary,
        "layer_profile": profiles,
        "goal": {
            "max_step_ratio": GOAL_RATIO,
            "met_wall": {name: entry["ratio_median"] <= GOAL_RATIO for name, entry in step_summary.items()},
            "met_cpu": {name: entry["cpu_ratio_median"] <= GOAL_RATIO
                        for name, entry in step_summary.items()},
        },
    }
    harness.write_results("step_time", args, results, render)
    return results


def converted_layers(jobs: dict[str, TrainingJob]) -> list[int]:
    """Layer indices that the expert variants convert; the first one is timed alone. With
    the dense variant only, the last layer."""
    for job in jobs.values():
        if job.layers:
            return job.layers
    return [len(jobs["dense"].blocks) - 1]


def real_batches(dataset: Any, collate: Any, batch_size: int, count: int, seed: int) -> list[dict]:
    """Collate the first `count` batches of a training epoch, in the order `fit` draws them
    for epoch 0 of `seed`, padded per batch by the run's collator."""
    import torch

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100_003))
    chunks = [chunk.tolist() for chunk in order.split(batch_size)]
    return [collate([dataset[index] for index in chunks[i % len(chunks)]]) for i in range(count)]


class TrainingJob:
    """One variant: the model loaded and converted as a run does, its AdamW optimiser and
    schedule, and the run's training step (`emoe_lab.train._train_step`) with its hooks."""

    def __init__(self, base: list[str], name: str, task: Any, total_steps: int) -> None:
        import torch
        from transformers import get_linear_schedule_with_warmup

        from emoe_lab import moe
        from emoe_lab.metrics import running_metrics
        from emoe_lab.models import load_model
        from emoe_lab.moe.convert import family_of
        from emoe_lab.train import Hooks, _optimizer

        overrides = VARIANTS.get(name, VARIANTS["balanced_kmeans+avg_k"])
        self.cfg = harness.compose(base + overrides)
        torch.manual_seed(self.cfg.seed)
        self.model = load_model(self.cfg.model, task.num_labels, Path(self.cfg.cache_dir))
        self.blocks = family_of(self.model).blocks(self.model)
        self.layers: list[int] = []
        self.expert_sizes: dict[int, list[int]] = {}
        self.hooks = Hooks()
        if self.cfg.moe.enabled:
            reports = moe.convert_model(
                self.model, self.cfg.moe, self.cfg.clusterer, self.cfg.gating, seed=self.cfg.seed,
                cache_dir=Path(self.cfg.cache_dir),
            )
            self.layers = [report["layer"] for report in reports]
            self.expert_sizes = {report["layer"]: report["expert_sizes"] for report in reports}
            # The same hooks as the run's pipeline builds for training.
            self.hooks = Hooks(
                extra_loss=moe.moe_aux_loss,
                before_forward=lambda m, batch: moe.set_token_mask(m, batch.get("attention_mask")),
            )
            for layer in moe.moe_layers(self.model):
                layer.track_statistics = name != NO_STATISTICS

        self.optimizer = _optimizer(self.model, self.cfg.train)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(self.cfg.train.warmup_ratio * total_steps), total_steps
        )
        self.running = running_metrics(task.num_labels, task.is_regression)
        self.state = {"step": 0}
        self.device = torch.device("cpu")
        self.model.train()

    def step(self, batch: dict) -> harness.Stopwatch:
        """Run one training step on `batch` and return its timing."""
        from emoe_lab.train import _train_step

        with harness.Stopwatch() as watch:
            _train_step(self.model, batch, self.device, self.optimizer, self.scheduler,
                        self.cfg.train, self.hooks, self.running, self.state)
        self.state["step"] += 1
        return watch

    def layer_pass(self, layer: int, inputs: tuple[Any, Any]) -> Any:
        """Return a callable that times forward and backward of block `layer`'s FFN
        (intermediate and output, with dropout and LayerNorm) on the captured hidden states."""
        block = self.blocks[layer]
        hidden, mask = inputs
        parameters = [*block.intermediate.parameters(), *block.output.parameters()]

        def run(_round_index: int) -> harness.Stopwatch:
            for parameter in parameters:
                parameter.grad = None
            x = hidden.detach().clone().requires_grad_(True)
            if hasattr(block.intermediate, "token_mask"):
                block.intermediate.token_mask = mask
            with harness.Stopwatch() as watch:
                h = block.intermediate(x)
                block.output(h, x).sum().backward()
            return watch

        return run


def profile_operators(run: Any, passes: int, top: int = 8) -> list[dict[str, Any]]:
    """Run `passes` layer passes under torch.profiler and return the `top` operators by
    self CPU time, in milliseconds and calls per pass."""
    from torch.profiler import ProfilerActivity, profile

    run(0)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for index in range(passes):
            run(index)
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total,
                    reverse=True)
    return [
        {"operator": event.key, "self_ms_per_pass": event.self_cpu_time_total / 1e3 / passes,
         "calls_per_pass": event.count / passes}
        for event in events[:top]
    ]


def capture_layer_input(model: Any, batch: dict, layer: int) -> tuple[Any, Any]:
    """Capture the hidden states [batch, seq, d] entering block `layer`'s FFN on a real
    batch; return them with the batch's attention mask."""
    import torch

    from emoe_lab.moe.convert import family_of

    block = family_of(model).blocks(model)[layer]
    captured = {}

    def keep_input(_module: Any, inputs: tuple, _output: Any) -> None:
        captured["x"] = inputs[0].detach().clone()

    handle = block.intermediate.register_forward_hook(keep_input)
    try:
        with torch.no_grad():
            model(**{key: value for key, value in batch.items() if key != "labels"})
    finally:
        handle.remove()
    return captured["x"], batch["attention_mask"]


def render(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        f"Training step, {settings['model']} on {settings['task']}, batch {settings['batch_size']}, "
        f"{settings['torch_threads']} thread(s), {settings['rounds']} rounds "
        f"(load average at start {results['machine']['load_average_at_start'][0]:.2f})",
        "",
        harness.format_table(
            ["variant", "median s", "min s", "ratio vs dense (paired)", "CPU ratio (paired)",
             "ratio of minimums"],
            [[name, entry["median_s"], entry["min_s"], entry["ratio_median"],
              entry["cpu_ratio_median"], entry["ratio_min"]]
             for name, entry in results["step"].items()],
        ),
    ]
    if results["layer"]:
        lines += [
            "",
            f"One FFN layer (layer {settings['converted_layers'][0]}), forward + backward, "
            f"{settings['layer_rounds']} rounds",
            "",
            harness.format_table(
                ["variant", "median ms", "min ms", "ratio vs dense (paired)", "CPU ratio (paired)",
                 "extra ms", "extra CPU ms", "predicted step ratio", "predicted CPU step ratio"],
                [[name, entry["median_s"] * 1e3, entry["min_s"] * 1e3, entry["ratio_median"],
                  entry["cpu_ratio_median"], entry["extra_ms_per_layer"],
                  entry["cpu_extra_ms_per_layer"], entry["predicted_step_ratio"],
                  entry["cpu_predicted_step_ratio"]]
                 for name, entry in results["layer"].items()],
            ),
        ]
    if results["layer_profile"]:
        lines += [
            "",
            "Costliest operators of one layer pass (self CPU ms per pass, torch.profiler)",
            "",
            harness.format_table(
                ["variant", "operators"],
                [[name, ", ".join(f"{op['operator']} {op['self_ms_per_pass']:.1f}" for op in ops)]
                 for name, ops in results["layer_profile"].items()],
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
