"""One job of emoe_lab, as a list of stages: validate, load, convert, train, evaluate,
record. Whatever happens, `results.json` records how the job ended and the W&B run is closed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from .results import RESULTS_FILE, ResultsRecorder, describe_cell, read_results
from .tracking import Tracker, make_tracker
from .train import Hooks, Interrupted, evaluate, fit, resolve_device, stop_on_signals
from .validation import validate_config

log = logging.getLogger(__name__)

# Keys that do not change what a job computes; a checkpoint made under other values of
# these keys can still be resumed.
_NOT_FINGERPRINTED = ("logger", "study", "cache_dir")


@contextmanager
def stage(name: str, timings: dict[str, float], key: str | None = None) -> Iterator[None]:
    """Log the start and the duration of a stage, and record the duration in `timings`."""
    log.info("%s ...", name)
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    if key:
        timings[key] = timings.get(key, 0.0) + seconds
    log.info("%s done in %.1f s", name, seconds)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (all devices); optionally ask for deterministic kernels."""
    from transformers import set_seed

    set_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def fingerprint(config: dict[str, Any]) -> str:
    relevant = {k: v for k, v in config.items() if k not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _job_context() -> tuple[Path, list[str], str | None, str]:
    """Return the job's output folder, its overrides, the W&B group and the run name."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    is_multirun = str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    group = Path(hydra_cfg.sweep.dir).name if is_multirun else None
    name = hydra_cfg.job.override_dirname or output_dir.name
    return output_dir, overrides, group, name


def _resume_override() -> str:
    """Return the override that points a rerun at this job's folder. The default folders
    carry a timestamp, so the same command alone would start a new job."""
    hydra_cfg = HydraConfig.get()
    if str(hydra_cfg.mode) == "RunMode.MULTIRUN":
        return shlex.quote(f"hydra.sweep.dir={hydra_cfg.sweep.dir}")
    return shlex.quote(f"hydra.run.dir={hydra_cfg.runtime.output_dir}")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job and return its results (the content of `results.json`)."""
    output_dir, overrides, group, name = _job_context()
    config = OmegaConf.to_container(cfg, resolve=True)
    results_path = output_dir / RESULTS_FILE

    previous = read_results(results_path)
    if previous and previous.get("status") == "completed":
        if fingerprint(previous.get("config") or {}) == fingerprint(config):
            log.info("Skipping %s: its results.json has status completed", output_dir)
            return previous
        # Check the new config before moving completed results aside, so that a bad value
        # leaves them where the report finds them.
        validate_config(cfg)
        kept = results_path.with_name(f"results.{previous.get('finished_at', 'old')}.json".replace(":", "-"))
        results_path.rename(kept)
        log.warning(
            "%s contains completed results of another config, kept as %s; running again",
            output_dir, kept.name,
        )
        ckpt.remove_checkpoints(output_dir)

    log.info("Config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    cell = describe_cell(cfg)
    recorder = ResultsRecorder(output_dir, config, overrides, cell)
    trackers: list[Tracker] = []
    exit_code = 1
    try:
        with stop_on_signals() as stop:
            group = cfg.logger.group or group
            _pipeline(cfg, config, cell, output_dir, recorder, stop, group, name, trackers)
        exit_code = 0
        return recorder.data
    except Interrupted as error:
        recorder.finish("interrupted", error)
        log.error(
            "Interrupted: %s. To resume, run the same command with this override added:\n  %s",
            error, _resume_override(),
        )
        signum = signal.Signals[error.signal_name]
        raise SystemExit(128 + int(signum)) from error
    except BaseException as error:
        recorder.finish("failed", error)
        log.error("Job failed: %s: %s", type(error).__name__, error)
        raise
    finally:
        for tracker in trackers:
            tracker.finish(exit_code)


def _pipeline(cfg, config, cell, output_dir, recorder, stop, group, name, trackers) -> None:
    """Run the stages and fill the recorder. The tracker is appended to `trackers` as soon
    as it exists, so the caller closes it whatever happens."""
    from .data import load_task, make_collator
    from .models import load_model, load_tokenizer

    timings: dict[str, float] = {}
    started = time.perf_counter()
    cache_dir = Path(cfg.cache_dir).expanduser().resolve()

    with stage("Validating the config", timings):
        validate_config(cfg)
    if cfg.train.torch_threads > 0:
        torch.set_num_threads(cfg.train.torch_threads)
    seed_everything(cfg.seed, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)

    with stage(f"Loading task {cfg.task.name}", timings, "load_seconds"):
        tokenizer = load_tokenizer(cfg.model, cache_dir)
        task = load_task(cfg.task, tokenizer, cfg.model.max_length, cache_dir)
        train_set = _limit(task.train, cfg.train.max_train_examples)
        validation_set = _limit(task.validation, cfg.train.max_eval_examples)
        test_set = _limit(task.test, cfg.train.max_eval_examples)
        log.info(
            "Examples: train %d, validation %d, test %d; labels %s",
            len(train_set), len(validation_set), len(test_set), task.label_names,
        )
    with stage(f"Loading model {cfg.model.name}", timings, "load_seconds"):
        problem_type = "regression" if task.is_regression else None
        model = load_model(cfg.model, task.num_labels, cache_dir, problem_type)
    stop.check("after loading the task and the model, before training")

    hooks = Hooks()
    layer_reports: list[dict[str, Any]] = []
    if cfg.moe.enabled:
        from . import moe

        moe.validate_moe_config(model, cfg.moe, cfg.clusterer, cfg.gating)
        with stage(
            f"Converting layers {list(cfg.moe.layers)} with {cfg.clusterer.name} + {cfg.gating.name}",
            timings,
            "convert_seconds",
        ):
            layer_reports = moe.convert_model(
                model, cfg.moe, cfg.clusterer, cfg.gating, seed=cfg.seed,
                cache_dir=cache_dir if cfg.moe.cache else None,
            )
        for report in layer_reports:
            log.info(
                "Layer %d: %d experts, sizes %s (%.1f s%s)",
                report["layer"], report["num_experts"], report["expert_sizes"],
                report["clustering_seconds"], ", cached" if report["cache_hit"] else "",
            )
        hooks = Hooks(
            extra_loss=moe.moe_aux_loss,
            before_forward=lambda m, batch: moe.set_token_mask(m, batch.get("attention_mask")),
            before_eval=moe.reset_moe_statistics,
            after_eval=lambda m: {"layers": moe.moe_statistics(m)},
        )
        recorder.update(moe={"layers": layer_reports, "active_fraction": None})
        cached = "; cluster labels are cached" if cfg.moe.cache else ""
        stop.check(f"after the conversion, before training{cached}")

    model.to(device)
    collate = make_collator(tokenizer)
    tracker = make_tracker(cfg.logger, output_dir, config, cell, group, name)
    trackers.append(tracker)
    tracker.summary({"params": sum(p.numel() for p in model.parameters())})

    with stage("Training", timings):
        result = fit(
            model, train_set, validation_set, collate, cfg.train,
            seed=cfg.seed, metric_names=list(task.metrics), main_metric=task.main_metric,
            is_regression=task.is_regression, num_labels=task.num_labels,
            output_dir=output_dir, tracker=tracker, stop=stop,
            config_fingerprint=fingerprint(config), hooks=hooks,
            on_progress=lambda progress: recorder.update(**progress),
        )
    timings["train_seconds"] = result.train_seconds
    timings["eval_seconds"] = result.eval_seconds

    metrics = {f"validation/{k}": v for k, v in result.best_metrics.items()}
    with stage("Evaluating the best epoch on the test split", timings, "eval_seconds"):
        splits = {"test": test_set} | {
            split: _limit(data, cfg.train.max_eval_examples) for split, data in task.extra_eval.items()
        }
        for split, data in splits.items():
            split_metrics, _ = evaluate(
                model, data, collate, cfg.train.eval_batch_size, device,
                list(task.metrics), task.is_regression, hooks, desc=split,
            )
            metrics |= {f"{split}/{k}": v for k, v in split_metrics.items()}
    log.info("Final metrics: %s", json.dumps(metrics, indent=None))

    moe_record = _moe_record(layer_reports, result.moe_stats)
    timings["total_seconds"] = time.perf_counter() - started
    recorder.update(
        metrics=metrics, best_epoch=result.best_epoch, steps=result.steps,
        history=result.history, moe=moe_record, timings=timings,
    )
    if cfg.train.save_model:
        ckpt.atomic_torch_save(model.state_dict(), output_dir / "best_model.pt")
    recorder.finish("completed")
    tracker.summary(
        metrics
        | {"best_epoch": result.best_epoch, "steps": result.steps}
        | {"moe/active_fraction": moe_record["active_fraction"]}
        | {f"timings/{k}": v for k, v in timings.items()}
    )
    if not cfg.train.keep_checkpoints_on_success:
        ckpt.remove_checkpoints(output_dir)
    log.info("Results written to %s", output_dir / RESULTS_FILE)


def _limit(dataset: Any, limit: int) -> Any:
    if limit is None or limit < 0 or limit >= len(dataset):
        return dataset
    return dataset.select(range(limit))


def _moe_record(layer_reports: list[dict], stats: dict[str, Any]) -> dict[str, Any]:
    """Merge the conversion report of each layer with its statistics on validation."""
    if not layer_reports:
        return {"layers": [], "active_fraction": 1.0}
    by_layer = {entry["layer"]: entry for entry in stats.get("layers", [])}
    layers = [report | by_layer.get(report["layer"], {}) for report in layer_reports]
    fractions = [layer["active_fraction"] for layer in layers if "active_fraction" in layer]
    mean_fraction = sum(fractions) / len(fractions) if fractions else None
    return {"layers": layers, "active_fraction": mean_fraction}
