"""Measure a run's evaluation (`emoe_lab.train.evaluate`) in examples per second and peak
memory, against the same loop with gradients on and with autograd's no_grad, and with the
avg-k gate vectors computed once instead of at every forward.

Run: .venv/bin/python benchmarks/evaluation.py            (MiniLM-L6, Rotten Tomatoes validation)
     .venv/bin/python benchmarks/evaluation.py --max-examples 1000 --rounds 3
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

INFERENCE = "evaluate (inference_mode)"
NO_GRAD = "same loop, no_grad"
GRAD_ON = "same loop, gradients on"
CACHED_GATE = "evaluate, avg-k gate cached"
MODES = (INFERENCE, NO_GRAD, GRAD_ON, CACHED_GATE)


def parse_args(argv: list[str] | None) -> Any:
    parser = harness.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--moe", nargs="+", default=["emoe", "dense"], choices=["emoe", "dense"],
                        help="Models to evaluate: EMoE's defaults (the default run) and dense.")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--max-examples", type=int, default=256,
                        help="Validation examples per evaluation; -1 for the whole split.")
    parser.add_argument("--batch-size", type=int, default=128, help="Evaluation batch size.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed evaluations per variant.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed evaluations per variant first.")
    parser.add_argument("--steps", type=int, default=None, help="Alias of --rounds.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    args = parser.parse_args(argv)
    if args.steps is not None:
        args.rounds = args.steps
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    harness.setup_torch(args.threads)
    record = harness.run_record(args)

    import torch

    from emoe_lab.data import load_task, make_collator
    from emoe_lab.models import load_tokenizer

    base = harness.base_overrides(args) + [f"train.eval_batch_size={args.batch_size}"]
    cfg = harness.compose(base)
    cache_dir = Path(cfg.cache_dir)
    tokenizer = load_tokenizer(cfg.model, cache_dir)
    task = load_task(cfg.task, tokenizer, cfg.model.max_length, cache_dir)
    data = task.validation
    if 0 <= args.max_examples < len(data):
        data = data.select(range(args.max_examples))
    collate = make_collator(tokenizer)
    device = torch.device(args.device)

    models = {name: EvaluatedModel(base + [f"moe={name}"], task, device) for name in args.moe}
    variants: dict[str, Callable[[int], harness.Stopwatch]] = {}
    for model_name, model in models.items():
        for mode in args.modes:
            if mode == CACHED_GATE and not model.is_avg_k:
                continue
            variants[f"{model_name}: {mode}"] = model.timed(mode, data, collate, args.batch_size)

    times = harness.interleave(variants, args.rounds, args.warmup, desc="evaluations")
    summary = harness.summarise(times)
    for name, entry in summary.items():
        model_name, mode = name.split(": ", 1)
        model = models[model_name]
        reference = times[f"{model_name}: {INFERENCE}"] if INFERENCE in args.modes else None
        entry["examples_per_s_median"] = len(data) / entry["median_s"]
        entry["examples_per_s_max"] = len(data) / entry["min_s"]
        entry["peak_rss_increase_mib"] = max(model.rss_peaks[mode]) / 2**20
        cuda_peaks = model.cuda_peaks[mode]
        entry["cuda_max_allocated_mib"] = max(cuda_peaks) / 2**20 if cuda_peaks else None
        entry["metrics"] = model.metrics[mode]
        if reference is not None:
            for clock, prefix in (("wall", ""), ("cpu", "cpu_")):
                paired = [value / ref
                          for value, ref in zip(times[name][clock], reference[clock], strict=True)]
                entry[f"{prefix}time_ratio_vs_inference_mode"] = statistics.median(paired)

    results = record | {
        "settings": {
            "model": cfg.model.name, "task": cfg.task.name, "split": "validation",
            "examples": len(data), "batch_size": args.batch_size, "rounds": args.rounds,
            "device": str(device), "torch_threads": torch.get_num_threads(),
        },
        "process_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "evaluations": summary,
    }
    harness.write_results("evaluation", args, results, render)
    return results


class EvaluatedModel:
    """A model loaded (and converted) as the run loads it, with the run's evaluation hooks."""

    def __init__(self, overrides: list[str], task: Any, device: Any) -> None:
        import torch

        from emoe_lab import moe
        from emoe_lab.models import load_model
        from emoe_lab.train import Hooks

        self.cfg = harness.compose(overrides)
        self.task = task
        self.device = device
        torch.manual_seed(self.cfg.seed)
        self.model = load_model(self.cfg.model, task.num_labels, Path(self.cfg.cache_dir))
        self.hooks = Hooks()
        self.is_avg_k = False
        if self.cfg.moe.enabled:
            moe.convert_model(self.model, self.cfg.moe, self.cfg.clusterer, self.cfg.gating,
                              seed=self.cfg.seed, cache_dir=Path(self.cfg.cache_dir))
            # The same hooks as the run's pipeline builds.
            self.hooks = Hooks(
                extra_loss=moe.moe_aux_loss,
                before_forward=lambda m, batch: moe.set_token_mask(m, batch.get("attention_mask")),
                before_eval=moe.reset_moe_statistics,
                after_eval=lambda m: {"layers": moe.moe_statistics(m)},
            )
            self.is_avg_k = self.cfg.gating.name == "avg_k"
        self.model.to(device)
        self.rss_peaks: dict[str, list[int]] = {mode: [] for mode in MODES}
        self.cuda_peaks: dict[str, list[int]] = {mode: [] for mode in MODES}
        self.metrics: dict[str, dict] = {}

    def timed(
        self, mode: str, data: Any, collate: Any, batch_size: int
    ) -> Callable[[int], harness.Stopwatch]:
        import torch

        def run(_round_index: int) -> harness.Stopwatch:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            with PeakRss() as peak, harness.Stopwatch() as watch:
                metrics = self.evaluate(mode, data, collate, batch_size)
            self.rss_peaks[mode].append(peak.increase)
            if self.device.type == "cuda":
                self.cuda_peaks[mode].append(torch.cuda.max_memory_allocated(self.device))
            self.metrics[mode] = metrics
            return watch

        return run

    def evaluate(self, mode: str, data: Any, collate: Any, batch_size: int) -> dict[str, float]:
        import torch

        from emoe_lab.train import evaluate

        task = self.task
        if mode == NO_GRAD:
            return evaluate_under(torch.no_grad, self.model, data, collate, batch_size, self.device,
                                  list(task.metrics), task.is_regression, self.hooks)
        if mode == GRAD_ON:
            return evaluate_under(torch.enable_grad, self.model, data, collate, batch_size,
                                  self.device, list(task.metrics), task.is_regression, self.hooks)
        context = cached_avg_k_gates() if mode == CACHED_GATE else contextlib.nullcontext()
        with context:
            metrics, _ = evaluate(self.model, data, collate, batch_size, self.device,
                                  list(task.metrics), task.is_regression, self.hooks)
        return metrics


def evaluate_under(
    grad_mode: Callable[[], Any], model: Any, dataset: Any, collate: Any, batch_size: int,
    device: Any, metric_names: list[str], is_regression: bool, hooks: Any,
) -> dict[str, float]:
    """`emoe_lab.train.evaluate`'s loop with `grad_mode` in place of inference_mode."""
    import torch
    from torch.utils.data import DataLoader

    from emoe_lab.metrics import compute_metrics
    from emoe_lab.train import _to_device

    was_training = model.training
    model.eval()
    hooks.before_eval(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    predictions, labels = [], []
    with grad_mode():
        for batch in loader:
            batch = _to_device(batch, device)
            hooks.before_forward(model, batch)
            target = batch.pop("labels")
            logits = model(**batch).logits
            predictions.append(
                logits.detach().squeeze(-1).float().cpu() if is_regression
                else logits.argmax(-1).cpu()
            )
            labels.append(target.cpu())
    hooks.after_eval(model)
    model.train(was_training)
    return compute_metrics(metric_names, torch.cat(predictions).numpy(), torch.cat(labels).numpy())


@contextlib.contextmanager
def cached_avg_k_gates() -> Iterator[None]:
    """Compute each avg-k gate's vectors once per block instead of at every forward; valid
    while W_in does not change, which holds during an evaluation."""
    from emoe_lab.moe.gating import AvgK

    original = AvgK.gate_vectors
    cache: dict[int, Any] = {}

    def cached(self: Any, keys: Any) -> Any:
        if id(self) not in cache:
            cache[id(self)] = original(self, keys)
        return cache[id(self)]

    AvgK.gate_vectors = cached
    try:
        yield
    finally:
        AvgK.gate_vectors = original


class PeakRss:
    """Peak resident set size above the level at entry, sampled every 2 ms by a thread
    (torch kernels release the GIL, so the sampler runs during forwards)."""

    def __enter__(self) -> PeakRss:
        self.start = _rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.increase = self.peak - self.start


def _rss_bytes() -> int:
    """Current resident set size, from psutil when installed, else /proc/self/statm."""
    try:
        import psutil
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    return psutil.Process().memory_info().rss


def render(results: dict[str, Any]) -> str:
    settings = results["settings"]
    rows = [
        [name, entry["examples_per_s_median"], entry["examples_per_s_max"],
         entry.get("time_ratio_vs_inference_mode"), entry.get("cpu_time_ratio_vs_inference_mode"),
         entry["peak_rss_increase_mib"],
         entry["cuda_max_allocated_mib"]]
        for name, entry in results["evaluations"].items()
    ]
    return "\n".join([
        f"Evaluation of {settings['examples']} {settings['task']} {settings['split']} examples, "
        f"{settings['model']}, batch {settings['batch_size']}, {settings['device']}, "
        f"{settings['torch_threads']} thread(s), {settings['rounds']} rounds",
        "",
        harness.format_table(
            ["variant", "examples/s (median)", "examples/s (best)", "time vs inference_mode",
             "CPU time vs inference_mode", "peak RSS increase MiB", "CUDA max allocated MiB"],
            rows,
        ),
        "",
        f"Process peak RSS (ru_maxrss): {results['process_max_rss_mib']:.0f} MiB",
    ])


if __name__ == "__main__":
    main()
