"""Compare emoe_lab's training loop (`emoe_lab.train.fit`) with Hugging Face's `Trainer`
fine-tuning the same dense model on the same batches, in training examples per second, and
time the loop's per-step work outside forward and backward to explain the difference.

Run: .venv/bin/python benchmarks/trainer_vs_loop.py                 (MiniLM-L6, Rotten Tomatoes)
     .venv/bin/python benchmarks/trainer_vs_loop.py --steps 40 --rounds 3
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

FIT = "emoe_lab fit"
TRAINER = "Trainer"
TRAINER_FOREACH = "Trainer, optim=adamw_torch"
# fit with torch's default AdamW kernel (the per-tensor loop on CPU, foreach on CUDA) in
# place of the fused one that emoe_lab.train builds.
FIT_UNFUSED = "emoe_lab fit, AdamW unfused"
VARIANTS = (FIT, TRAINER, TRAINER_FOREACH, FIT_UNFUSED)
DEFAULT_VARIANTS = (FIT, TRAINER, TRAINER_FOREACH)


def parse_args(argv: list[str] | None) -> Any:
    parser = harness.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="Optimiser steps per training run.")
    parser.add_argument("--rounds", type=int, default=2, help="Timed runs per variant.")
    parser.add_argument(
        "--warmup-steps", type=int, default=2,
        help="Steps of one untimed run per variant first (imports, allocator); 0 skips it.",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="Training batch size.")
    parser.add_argument("--max-length", type=int, default=64, help="Tokens per example at most.")
    parser.add_argument(
        "--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS,
        help="Training loops to compare.",
    )
    parser.add_argument(
        "--overhead-repeats", type=int, default=30,
        help="Repeats of each per-step operation timed alone; 0 skips the breakdown.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    harness.setup_torch(args.threads)
    record = harness.run_record(args)

    import torch

    from emoe_lab.data import load_task, make_collator
    from emoe_lab.models import load_tokenizer

    overrides = harness.base_overrides(args) + [
        "moe=dense", f"train.batch_size={args.batch_size}", f"model.max_length={args.max_length}",
        f"train.max_steps={args.steps}", "train.epochs=1",
    ]
    cfg = harness.compose(overrides)
    cache_dir = Path(cfg.cache_dir)
    tokenizer = load_tokenizer(cfg.model, cache_dir)
    task = load_task(cfg.task, tokenizer, cfg.model.max_length, cache_dir)
    bench = Bench(cfg, task, make_collator(tokenizer), tokenizer)

    if args.warmup_steps > 0:
        for name in args.variants:
            bench.run(name, args.warmup_steps)
    runs: dict[str, list[dict]] = {name: [] for name in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            runs[name].append(bench.run(name, args.steps))

    times = {
        name: {"wall": [entry["train_seconds"] for entry in entries],
               "cpu": [entry["train_cpu_seconds"] for entry in entries]}
        for name, entries in runs.items()
    }
    summary = harness.summarise(times, baseline=args.variants[0])
    examples = args.steps * args.batch_size
    for name, entry in summary.items():
        entry["examples_per_s_median"] = examples / entry["median_s"]
        entry["examples_per_s_max"] = examples / entry["min_s"]
        entry["examples_per_cpu_s_median"] = examples / entry["cpu_median_s"]
        entry["runs"] = runs[name]
        entry["speed_ratio_vs_first"] = 1 / entry["ratio_median"]
    batch_fingerprints = {name: entries[0]["batches"] for name, entries in runs.items()}
    same_batches = len({tuple(map(tuple, value)) for value in batch_fingerprints.values()}) == 1

    overheads = per_step_overheads(bench, args.overhead_repeats) if args.overhead_repeats > 0 else {}

    results = record | {
        "settings": {
            "model": cfg.model.name, "task": cfg.task.name, "batch_size": args.batch_size,
            "max_length": args.max_length, "steps": args.steps, "rounds": args.rounds,
            "examples_per_run": examples, "log_every": cfg.train.log_every,
            "torch_threads": torch.get_num_threads(),
        },
        "same_batches": same_batches,
        "loops": summary,
        "per_step_overheads_ms": overheads,
    }
    harness.write_results("trainer_vs_loop", args, results, render)
    return results


class Bench:
    """Fresh dense models trained by `fit` or by `Trainer` on the same examples in the same
    order, with the run's collator (dynamic padding) and the run's optimiser settings."""

    def __init__(self, cfg: Any, task: Any, collate: Any, tokenizer: Any) -> None:
        self.cfg = cfg
        self.task = task
        self.collate = collate
        self.tokenizer = tokenizer

    def examples(self, steps: int) -> Any:
        size = min(steps * self.cfg.train.batch_size, len(self.task.train))
        return self.task.train.select(range(size))

    def fresh_model(self) -> Any:
        import torch

        from emoe_lab.models import load_model

        torch.manual_seed(self.cfg.seed)
        return load_model(self.cfg.model, self.task.num_labels, Path(self.cfg.cache_dir))

    def run(self, name: str, steps: int) -> dict[str, Any]:
        """Train a fresh model for `steps` steps and return its timings and a fingerprint of
        each batch. `train_seconds` is the loop's wall time as the loop reports it.
        `train_cpu_seconds` runs from the first batch's collation to the end of the last step,
        and `wall_seconds` covers the whole call."""
        import torch

        batches: list[list[int]] = []
        collated_at: list[float] = []

        def recording_collate(features: list[dict]) -> Any:
            collated_at.append(time.process_time())
            batch = self.collate(features)
            batches.append([*batch["input_ids"].shape, int(batch["input_ids"].sum())])
            return batch

        threads = torch.get_num_threads()
        folder = Path(tempfile.mkdtemp(prefix="emoe_bench_"))
        try:
            model = self.fresh_model()
            with harness.Stopwatch() as wall:
                if name in (FIT, FIT_UNFUSED):
                    context = unfused_adamw() if name == FIT_UNFUSED else contextlib.nullcontext()
                    with context:
                        train_seconds = self._fit(model, steps, recording_collate, folder)
                    # The collation after the last step is fit's validation batch.
                    ended_at = collated_at[steps]
                else:
                    optim = "adamw_torch" if name == TRAINER_FOREACH else None
                    train_seconds, ended_at = self._trainer(
                        model, steps, recording_collate, folder, optim
                    )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        threads_after = torch.get_num_threads()
        torch.set_num_threads(threads)
        return {
            "train_seconds": train_seconds, "train_cpu_seconds": ended_at - collated_at[0],
            "wall_seconds": wall.seconds,
            "torch_threads_after": threads_after,
            # fit also collates its validation batches after the training ones.
            "batches": batches[:steps],
        }

    def _fit(self, model: Any, steps: int, collate: Any, folder: Path) -> float:
        from omegaconf import open_dict

        from emoe_lab.tracking import Tracker
        from emoe_lab.train import StopRequest, fit

        train_cfg = self.cfg.train.copy()
        with open_dict(train_cfg):
            train_cfg.max_steps = steps
        # fit validates once after the last step; a few examples keep that short, and its
        # seconds are counted apart from train_seconds.
        validation = self.task.validation.select(range(min(8, len(self.task.validation))))
        result = fit(
            model, self.examples(steps), validation, collate, train_cfg, seed=self.cfg.seed,
            metric_names=list(self.task.metrics), main_metric=self.task.main_metric,
            is_regression=self.task.is_regression, num_labels=self.task.num_labels,
            output_dir=folder, tracker=Tracker(), stop=StopRequest(), config_fingerprint="bench",
        )
        return result.train_seconds

    def _trainer(
        self, model: Any, steps: int, collate: Any, folder: Path, optim: str | None
    ) -> tuple[float, float]:
        """Train with Trainer; return its train_runtime and the CPU clock after the last step."""
        import torch
        from transformers import Trainer, TrainerCallback, TrainingArguments

        ended_at: list[float] = []

        class MarkLastStep(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step == state.max_steps:
                    ended_at.append(time.process_time())

        train = self.cfg.train
        examples = self.examples(steps)
        # fit's order of epoch 0 (see emoe_lab.train.fit), given to Trainer as a sequence.
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003)
        order = torch.randperm(len(examples), generator=generator)
        ordered = examples.select(order.tolist())
        options = {"optim": optim} if optim else {}
        arguments = TrainingArguments(
            output_dir=str(folder), max_steps=steps, per_device_train_batch_size=train.batch_size,
            learning_rate=train.lr, weight_decay=train.weight_decay,
            warmup_steps=int(train.warmup_ratio * steps), lr_scheduler_type="linear",
            max_grad_norm=train.max_grad_norm, eval_strategy="no", save_strategy="no",
            logging_steps=train.log_every, report_to="none", use_cpu=True, seed=self.cfg.seed,
            dataloader_num_workers=0, dataloader_pin_memory=False,
            train_sampling_strategy="sequential", disable_tqdm=True, log_level="warning",
            **options,
        )
        trainer = Trainer(model=model, args=arguments, train_dataset=ordered, data_collator=collate,
                          callbacks=[MarkLastStep()])
        output = trainer.train()
        return float(output.metrics["train_runtime"]), ended_at[0]


@contextlib.contextmanager
def unfused_adamw() -> Iterator[None]:
    """Make `emoe_lab.train` build AdamW with torch's default kernel instead of the fused one."""
    import torch

    from emoe_lab import train

    original = train._optimizer

    def build(model: Any, train_cfg: Any) -> Any:
        groups = original(model, train_cfg).param_groups
        return torch.optim.AdamW(
            [{"params": group["params"], "weight_decay": group["weight_decay"]} for group in groups],
            lr=train_cfg.lr,
        )

    train._optimizer = build
    try:
        yield
    finally:
        train._optimizer = original


def per_step_overheads(bench: Bench, repeats: int) -> dict[str, dict]:
    """Milliseconds of each piece of per-step work, each timed alone `repeats` times on a
    model after one real step: loading and padding a batch, the running metrics, the loss
    checks, gradient clipping, the schedule and three AdamW implementations."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from emoe_lab.metrics import running_metrics
    from emoe_lab.train import _optimizer

    train = bench.cfg.train
    task = bench.task
    model = bench.fresh_model()
    model.train()
    examples = bench.examples(4)
    indices = list(range(min(train.batch_size, len(examples))))
    batch = bench.collate([examples[i] for i in indices])
    output = model(**batch)
    output.loss.backward()
    running = running_metrics(task.num_labels, task.is_regression)
    logits = output.logits.detach()
    preds = logits.argmax(-1)
    loss = output.loss.detach()
    parameters = [p for p in model.parameters() if p.requires_grad]

    optimizers = {}
    for implementation in ("foreach", "fused", "for-loop"):
        flags = {"foreach": {"foreach": True}, "fused": {"fused": True},
                 "for-loop": {"foreach": False}}[implementation]
        groups = _optimizer(model, train).param_groups
        optimizers[implementation] = torch.optim.AdamW(
            [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
            lr=train.lr, **flags,
        )
    schedule = get_linear_schedule_with_warmup(optimizers["foreach"], 10, 10_000)

    def metrics_compute() -> None:
        running.update(preds, batch["labels"])
        running.compute()
        running.reset()

    operations = {
        "load and pad a batch (dataset rows + collator)":
            lambda: bench.collate([examples[i] for i in indices]),
        "running metrics update": lambda: running.update(preds, batch["labels"]),
        "running metrics update + compute + reset": metrics_compute,
        "loss isfinite check + float(loss)": lambda: (bool(torch.isfinite(loss)), float(loss)),
        "clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(parameters, train.max_grad_norm),
        **{f"AdamW step ({name})": optimizer.step for name, optimizer in optimizers.items()},
        "scheduler.step": schedule.step,
    }

    def timed(operation: Any) -> Any:
        def run(_round_index: int) -> harness.Stopwatch:
            with harness.Stopwatch() as watch:
                operation()
            return watch

        return run

    times = harness.interleave({name: timed(op) for name, op in operations.items()}, repeats, 2,
                               desc="per-step work")
    return {
        name: {"median_ms": entry["median_s"] * 1e3, "min_ms": entry["min_s"] * 1e3,
               "cpu_median_ms": entry["cpu_median_s"] * 1e3, "n": entry["n"]}
        for name, entry in harness.summarise(times).items()
    }


def render(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        f"{settings['steps']} steps of dense {settings['model']} on {settings['task']}, batch "
        f"{settings['batch_size']}, {settings['torch_threads']} thread(s), {settings['rounds']} "
        f"rounds, same batches: {results['same_batches']}",
        "",
        harness.format_table(
            ["loop", "examples/s (median)", "examples/s (best)", "examples per CPU s",
             "loop s (median)", "speed vs first (paired)", "CPU speed vs first (paired)"],
            [[name, entry["examples_per_s_median"], entry["examples_per_s_max"],
              entry["examples_per_cpu_s_median"], entry["median_s"], entry["speed_ratio_vs_first"],
              1 / entry["cpu_ratio_median"]] for name, entry in results["loops"].items()],
        ),
    ]
    if results["per_step_overheads_ms"]:
        lines += [
            "",
            "Per-step work timed alone",
            "",
            harness.format_table(
                ["operation", "median ms", "min ms", "CPU median ms"],
                [[name, entry["median_ms"], entry["min_ms"], entry["cpu_median_ms"]]
                 for name, entry in results["per_step_overheads_ms"].items()],
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
