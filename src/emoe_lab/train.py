"""The fine-tuning loop: AdamW with linear warm-up and decay, gradient clipping,
validation each epoch, best epoch by the task's main metric, checkpoints and resume."""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from . import checkpoint as ckpt
from .metrics import compute_metrics, running_metrics
from .tracking import Tracker

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss)."""


class Interrupted(Exception):
    """The job received SIGINT or SIGTERM. `where` states how far it got and what was saved."""

    def __init__(self, signal_name: str, where: str) -> None:
        super().__init__(f"received {signal_name} {where}")
        self.signal_name = signal_name


@dataclass
class StopRequest:
    """Set by the signal handler. The training loop checks it after every optimiser step
    and the run between its stages before training."""

    signal_name: str | None = None

    def check(self, where: str) -> None:
        """Raise Interrupted when a signal has arrived."""
        if self.signal_name is not None:
            raise Interrupted(self.signal_name, where)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGINT and SIGTERM into a StopRequest for the duration of the block."""
    request = StopRequest()

    def handle(signum: int, _frame: Any) -> None:
        request.signal_name = signal.Signals(signum).name
        log.warning("Received %s: stopping at the next step or stage", request.signal_name)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Hooks:
    """Optional callbacks that connect the loop to the MoE layers."""

    extra_loss: Callable[[torch.nn.Module], torch.Tensor | None] = lambda model: None
    before_forward: Callable[[torch.nn.Module, dict], None] = lambda model, batch: None
    before_eval: Callable[[torch.nn.Module], None] = lambda model: None
    after_eval: Callable[[torch.nn.Module], dict[str, Any]] = lambda model: {}


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    moe_stats: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("train.device", name, "a device that exists here", "Use train.device=cpu.")
    return torch.device(name)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _optimizer(model: torch.nn.Module, train_cfg: Any) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm_or_bias = param.ndim < 2 or "norm" in name.lower()
        (no_decay if is_norm_or_bias else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": train_cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused AdamW: on CPU torch's default is a per-tensor loop, which took 340 ms of CPU a
    # step against 50 ms fused for MiniLM-L6 (benchmarks/trainer_vs_loop.py, 2-core AMD EPYC).
    try:
        return torch.optim.AdamW(groups, lr=train_cfg.lr, fused=True)
    except RuntimeError:
        # A device or dtype without a fused kernel, e.g. CPU before torch 2.4.
        return torch.optim.AdamW(groups, lr=train_cfg.lr)


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    collate: Callable,
    batch_size: int,
    device: torch.device,
    metric_names: list[str],
    is_regression: bool,
    hooks: Hooks | None = None,
    desc: str = "eval",
) -> tuple[dict[str, float], dict[str, Any]]:
    """Return corpus-level metrics over the whole split and the MoE statistics."""
    hooks = hooks or Hooks()
    was_training = model.training
    model.eval()
    # The hooks run outside inference mode: counters they create are updated in training too.
    hooks.before_eval(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    predictions, labels = [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False, mininterval=2.0):
            batch = _to_device(batch, device)
            hooks.before_forward(model, batch)
            target = batch.pop("labels")
            logits = model(**batch).logits
            predictions.append(
                logits.squeeze(-1).float().cpu() if is_regression else logits.argmax(-1).cpu()
            )
            labels.append(target.cpu())
    stats = hooks.after_eval(model)
    model.train(was_training)
    metrics = compute_metrics(
        metric_names, torch.cat(predictions).numpy(), torch.cat(labels).numpy()
    )
    return metrics, stats


def fit(
    model: torch.nn.Module,
    train_set: Any,
    validation_set: Any,
    collate: Callable,
    train_cfg: Any,
    *,
    seed: int,
    metric_names: list[str],
    main_metric: str,
    is_regression: bool,
    num_labels: int,
    output_dir: Path,
    tracker: Tracker,
    stop: StopRequest,
    config_fingerprint: str,
    hooks: Hooks | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Fine-tune `model` in place and load the best epoch's weights into it at the end.
    `on_progress` receives the steps done, the validation history and the best epoch
    after each epoch and when the loop stops for any reason, so that a record of the job
    shows how far it got."""
    hooks = hooks or Hooks()
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(train_set) / train_cfg.batch_size)
    total_steps = train_cfg.epochs * steps_per_epoch
    if train_cfg.max_steps >= 0:
        total_steps = min(total_steps, train_cfg.max_steps)

    optimizer = _optimizer(model, train_cfg)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(train_cfg.warmup_ratio * total_steps), max(total_steps, 1)
    )
    running = running_metrics(num_labels, is_regression).to(device)
    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "best_epoch": None,
        "best_metrics": None,
        "best_state": None,
        "history": [],
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
    }
    state = _resume(output_dir, state, model, optimizer, scheduler, config_fingerprint)

    def save(step_state: dict[str, Any]) -> None:
        ckpt.save_checkpoint(
            output_dir,
            {
                **step_state,
                "fingerprint": config_fingerprint,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            train_cfg.keep_checkpoints,
        )

    def validate(epoch: int) -> None:
        started = time.perf_counter()
        metrics, stats = evaluate(
            model, validation_set, collate, train_cfg.eval_batch_size, device,
            metric_names, is_regression, hooks, desc=f"validation epoch {epoch}",
        )
        state["eval_seconds"] += time.perf_counter() - started
        score = metrics[main_metric]
        record = {"epoch": epoch, "step": state["step"], **metrics}
        state["history"].append(record)
        log.info("Validation after epoch %d (step %d): %s", epoch, state["step"], _fmt(metrics))
        tracker.log({f"validation/{k}": v for k, v in metrics.items()} | {"epoch": epoch}, state["step"])
        best = state["best_metrics"]
        if best is None or score > best[main_metric]:
            state.update(best_epoch=epoch, best_metrics=metrics, moe_stats=stats)
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def report_progress() -> None:
        if on_progress is not None:
            on_progress(
                {"steps": state["step"], "history": list(state["history"]), "best_epoch": state["best_epoch"]}
            )

    if total_steps == 0 and state["best_metrics"] is None:
        log.info("train.max_steps=0: evaluating the model without training")
        validate(0)

    model.train()
    progress = tqdm(total=total_steps, initial=state["step"], desc="train", mininterval=2.0)
    started = time.perf_counter()
    try:
        for epoch in range(state["epoch"], train_cfg.epochs):
            if state["step"] >= total_steps:
                break
            epoch_generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(len(train_set), generator=epoch_generator)
            batches = [b.tolist() for b in order.split(train_cfg.batch_size)]
            # Without a generator, each DataLoader iterator draws its worker seed from
            # torch's global RNG. A run resumed mid-epoch creates one more iterator than
            # the uninterrupted run, which would shift dropout and random routing.
            loader = DataLoader(
                train_set,
                batch_sampler=batches[state["batch_in_epoch"] :],
                collate_fn=collate,
                num_workers=train_cfg.num_workers,
                generator=epoch_generator,
            )
            for batch in loader:
                loss = _train_step(
                    model, batch, device, optimizer, scheduler, train_cfg, hooks, running, state
                )
                state["step"] += 1
                state["batch_in_epoch"] += 1
                progress.update(1)
                if state["step"] % train_cfg.log_every == 0 or state["step"] == total_steps:
                    values = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0]}
                    values |= {f"train/{k}": float(v) for k, v in running.compute().items()}
                    running.reset()
                    tracker.log(values, state["step"])
                    progress.set_postfix(loss=f"{loss:.4f}")
                if stop.signal_name is not None:
                    state["train_seconds"] += time.perf_counter() - started
                    save(state)
                    raise Interrupted(stop.signal_name, f"at step {state['step']}; checkpoint saved")
                if train_cfg.checkpoint_every and state["step"] % train_cfg.checkpoint_every == 0:
                    save(state)
                if state["step"] >= total_steps:
                    break
            state["epoch"] = epoch + 1
            state["batch_in_epoch"] = 0
            state["train_seconds"] += time.perf_counter() - started
            validate(epoch + 1)
            started = time.perf_counter()
            save(state)
            report_progress()
    finally:
        progress.close()
        report_progress()

    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return FitResult(
        best_epoch=state["best_epoch"],
        best_metrics=state["best_metrics"],
        steps=state["step"],
        history=state["history"],
        moe_stats=state.get("moe_stats", {}),
        train_seconds=state["train_seconds"],
        eval_seconds=state["eval_seconds"],
    )


def _train_step(model, batch, device, optimizer, scheduler, train_cfg, hooks, running, state) -> float:
    batch = _to_device(batch, device)
    hooks.before_forward(model, batch)
    output = model(**batch)
    loss = output.loss
    extra = hooks.extra_loss(model)
    if extra is not None:
        loss = loss + extra
    if not torch.isfinite(loss):
        raise TrainingError(
            f"non-finite training loss ({loss.item()}) at step {state['step'] + 1} with "
            f"learning rate {scheduler.get_last_lr()[0]:.3g}. Lower train.lr (now "
            f"{train_cfg.lr}) or check the input data."
        )
    loss.backward()
    if train_cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = output.logits.detach()
        preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
        running.update(preds, batch["labels"])
    return float(loss.detach())


def _resume(output_dir, state, model, optimizer, scheduler, fingerprint) -> dict[str, Any]:
    saved = ckpt.load_latest_checkpoint(output_dir)
    if saved is None:
        return state
    if saved.get("fingerprint") != fingerprint:
        from .errors import ConfigError

        raise ConfigError(
            "hydra.run.dir",
            str(output_dir),
            "a folder whose checkpoints were written with the same config",
            "Its checkpoints belong to a different config: run in a new folder, or delete "
            f"{output_dir / ckpt.CHECKPOINT_DIR} to start over.",
        )
    model.load_state_dict(saved.pop("model"))
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    ckpt.restore_rng_states(saved.pop("rng"))
    saved.pop("fingerprint")
    return {**state, **saved}


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
