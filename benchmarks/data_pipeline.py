"""Measure what the data pipeline saves. The tokenised-task cache: a cold load reads, splits
and tokenises, while a warm load reads the saved Arrow files. Padding each batch to its own
longest example instead of to model.max_length: padded tokens and training-step time.

Run: .venv/bin/python benchmarks/data_pipeline.py         (MiniLM-L6 tokenizer, Rotten Tomatoes)
     .venv/bin/python benchmarks/data_pipeline.py --rounds 3 --step-rounds 6
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def parse_args(argv: list[str] | None) -> Any:
    parser = harness.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Cold and warm task loads timed.")
    parser.add_argument("--batch-size", type=int, default=32, help="Training batch size.")
    parser.add_argument("--max-length", type=int, default=64, help="Tokens per example at most.")
    parser.add_argument(
        "--step-rounds", type=int, default=3,
        help="Training steps timed per padding; 0 skips the step timing.",
    )
    parser.add_argument("--steps", type=int, default=None, help="Alias of --step-rounds.")
    args = parser.parse_args(argv)
    if args.steps is not None:
        args.step_rounds = args.steps
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    harness.setup_torch(args.threads)
    record = harness.run_record(args)

    from emoe_lab.data import load_task
    from emoe_lab.models import load_tokenizer

    cfg = harness.compose(harness.base_overrides(args) + [
        "moe=dense", f"model.max_length={args.max_length}", f"train.batch_size={args.batch_size}",
    ])
    tokenizer = load_tokenizer(cfg.model, Path(cfg.cache_dir))
    cache = time_task_cache(cfg, tokenizer, args.rounds)
    task = load_task(cfg.task, tokenizer, cfg.model.max_length, Path(cfg.cache_dir))
    padding = padding_record(cfg, task, tokenizer, args)

    results = record | {
        "settings": {"model": cfg.model.name, "task": cfg.task.name, "batch_size": args.batch_size,
                     "max_length": args.max_length, "rounds": args.rounds,
                     "step_rounds": args.step_rounds},
        "task_cache": cache,
        "padding": padding,
    }
    harness.write_results("data_pipeline", args, results, render)
    return results


def time_task_cache(cfg: Any, tokenizer: Any, rounds: int) -> dict[str, Any]:
    """Load the task into a new cache folder (miss) and again from it (hit), `rounds` times."""
    from emoe_lab.data import load_task

    folders: list[Path] = []

    def load(round_index: int, new_folder: bool) -> harness.Stopwatch:
        if new_folder:
            folders.append(Path(tempfile.mkdtemp(prefix="emoe_bench_tokenized_")))
        with harness.Stopwatch() as watch:
            load_task(cfg.task, tokenizer, cfg.model.max_length, folders[-1])
        return watch

    try:
        times = harness.interleave(
            {"cold (read, split, tokenise, save)": lambda r: load(r, True),
             "warm (cache hit)": lambda r: load(r, False)},
            rounds, 0, desc="task loads",
        )
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    return harness.summarise(times)


def padding_record(cfg: Any, task: Any, tokenizer: Any, args: Any) -> dict[str, Any]:
    """Tokens in one epoch of training batches (fit's order for the seed) padded per batch
    and padded to max_length, and the step time of both paddings on the same examples."""
    from transformers import DataCollatorWithPadding

    from emoe_lab.data import make_collator

    per_batch = make_collator(tokenizer)
    fixed = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=cfg.model.max_length,
                                    return_tensors="pt")
    chunks = epoch_chunks(len(task.train), args.batch_size, args.seed)
    all_lengths = [len(ids) for ids in task.train["input_ids"]]
    real = sum(all_lengths)
    padded = padded_tokens(chunks, all_lengths)
    grouped = padded_tokens(length_grouped(chunks, all_lengths, args.batch_size), all_lengths)
    fixed_tokens = len(task.train) * cfg.model.max_length
    record: dict[str, Any] = {
        "batches": len(chunks), "real_tokens": real, "tokens_padded_per_batch": padded,
        "tokens_padded_length_grouped": grouped, "tokens_padded_to_max_length": fixed_tokens,
        "padding_share_per_batch": 1 - real / padded,
        "padding_share_length_grouped": 1 - real / grouped,
        "padding_share_to_max_length": 1 - real / fixed_tokens,
    }
    if args.step_rounds > 0:
        record["steps"] = time_steps(cfg, task, chunks, {"per batch": per_batch, "to max_length": fixed},
                                     args.step_rounds)
    return record


def padded_tokens(chunks: list[list[int]], lengths: list[int]) -> int:
    """Tokens of the batches `chunks` (lists of example indices) padded per batch."""
    return sum(max(lengths[i] for i in chunk) * len(chunk) for chunk in chunks)


def length_grouped(chunks: list[list[int]], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Regroup the epoch's order into batches of similar lengths, as transformers'
    LengthGroupedSampler does: sort each run of 50 batches by length and cut it again."""
    order = [index for chunk in chunks for index in chunk]
    span = 50 * batch_size
    grouped = []
    for start in range(0, len(order), span):
        block = sorted(order[start : start + span], key=lambda index: -lengths[index])
        grouped += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    return grouped


def epoch_chunks(size: int, batch_size: int, seed: int) -> list[list[int]]:
    import torch

    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003))
    return [chunk.tolist() for chunk in order.split(batch_size)]


def time_steps(cfg: Any, task: Any, chunks: list[list[int]], collators: dict, rounds: int) -> dict:
    """Dense training steps on the same examples with each collator, interleaved."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from emoe_lab.metrics import running_metrics
    from emoe_lab.models import load_model
    from emoe_lab.train import Hooks, _optimizer, _train_step

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, task.num_labels, Path(cfg.cache_dir))
    model.train()
    optimizer = _optimizer(model, cfg.train)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10_000)
    running = running_metrics(task.num_labels, task.is_regression)
    state = {"step": 0}
    shapes: dict[str, list] = {name: [] for name in collators}

    def step(name: str) -> Any:
        def run(round_index: int) -> harness.Stopwatch:
            batch = collators[name]([task.train[i] for i in chunks[round_index % len(chunks)]])
            shapes[name].append(list(batch["input_ids"].shape))
            with harness.Stopwatch() as watch:
                _train_step(model, batch, torch.device("cpu"), optimizer, scheduler, cfg.train,
                            Hooks(), running, state)
            return watch

        return run

    times = harness.interleave({name: step(name) for name in collators}, rounds, 1,
                               desc="training steps")
    summary = harness.summarise(times, baseline="per batch")
    for name, entry in summary.items():
        entry["batch_shapes"] = shapes[name]
    return summary


def render(results: dict[str, Any]) -> str:
    cache = results["task_cache"]
    padding = results["padding"]
    lines = [
        f"Loading task {results['settings']['task']} with the {results['settings']['model']} tokenizer",
        "",
        harness.format_table(
            ["load", "median s", "min s", "CPU median s"],
            [[name, entry["median_s"], entry["min_s"], entry["cpu_median_s"]]
             for name, entry in cache.items()],
        ),
        "",
        f"One training epoch in batches of {results['settings']['batch_size']}: "
        f"{padding['real_tokens']} real tokens",
        "",
        harness.format_table(
            ["padding", "tokens", "padding share"],
            [["per batch (the run's collator)", padding["tokens_padded_per_batch"],
              f"{padding['padding_share_per_batch']:.1%}"],
             ["per batch, batches grouped by length (not used by runs)",
              padding["tokens_padded_length_grouped"], f"{padding['padding_share_length_grouped']:.1%}"],
             ["to max_length", padding["tokens_padded_to_max_length"],
              f"{padding['padding_share_to_max_length']:.1%}"]],
        ),
    ]
    if "steps" in padding:
        lines += [
            "",
            harness.format_table(
                ["padding", "median s", "min s", "ratio vs per batch (paired)", "CPU ratio (paired)"],
                [[name, entry["median_s"], entry["min_s"], entry["ratio_median"],
                  entry["cpu_ratio_median"]] for name, entry in padding["steps"].items()],
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
