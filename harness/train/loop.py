"""The training loop: one entry point for a single process and for every rank under `torchrun`."""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from models import build_model
from ..distributed import World
from ..errors import CheckpointError, ConfigError
from ..provenance import environment
from ..records import RecordStore
from ..runtime import autocast, default_dtype, resolve_device
from ..schema import ModelRef
from .config import OptimSpec, TrainData, TrainSpec, settings_defaults, settings_dict
from .data import EvalSplit, evaluation_split, open_sources, to_device, training_batches
from .loss import ReconstructionLoss
from .optim import build_optimizer, build_scheduler
from .repa import RepaTerm
from .state import latest_state, restore_rng_states, save_state
from .validation import evaluate_model

CHECKPOINT = "checkpoint.pt"
LOG = "metrics.jsonl"


@dataclass
class RunResult:
    model: torch.nn.Module          # the unwrapped model, on its device
    step: int
    train_seconds: float
    loss: str                       # which loss was optimized ("mse", "mse + 0.5*lpips(vgg)")
    loss_note: str
    device: torch.device
    dtype: str
    validation: list[dict[str, Any]] = field(default_factory=list)  # one row per validation, in step order
    eval_split: EvalSplit | None = None
    environment: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    """Log rows, keeping for every (kind, step) the last row written: a resumed run that repeats
    steps after a crash supersedes the rows the crash left behind."""
    latest: dict[tuple, dict[str, Any]] = {}
    for row in RecordStore(Path(out_dir) / LOG).rows():
        latest[(row.get("kind"), row.get("step"))] = row
    return sorted(latest.values(), key=lambda r: (r.get("step", 0), r.get("kind", "")))


def _same_settings(saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any], path: Path) -> None:
    """A checkpoint resumes only under the settings it was written with. An option the checkpoint
    predates counts as its default: adding an option to the harness must not strand finished runs."""
    for section, values in current.items():
        for key, value in values.items():
            old = saved.get(section, {}).get(key, defaults.get(section, {}).get(key))
            if json.dumps(old, sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
                raise ConfigError(f"{path}: was written with {section}.{key}={old!r}, this run asks for {value!r}; "
                                 f"use another output directory or delete the checkpoint to start over")


def training_step(wrapped, trained, batch, criterion, optimizer, scheduler, optim: OptimSpec, device: torch.device,
                  dtype: str, repa=None) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor, float]:
    """One optimizer step on `batch`: forward, loss (plus REPA's term), backward, clipping, the step and the
    schedule. Returns the loss, its parts, the gradient norm and the learning rate the step used. The
    training loop runs it, and the clean cost of a step is measured by timing it (`step_costs`)."""
    with autocast(device, dtype), repa.collect() if repa is not None else contextlib.nullcontext():
        render = wrapped(batch["input_images"], batch["input_c2w"], batch["input_fxfycxcy"],
                         batch["target_c2w"], batch["target_fxfycxcy"])
    loss, parts = criterion(render, batch["target_images"])
    if repa is not None:
        with autocast(device, dtype):
            repa_loss = repa.loss(batch["target_images"])
        loss = loss + repa.weight * repa_loss
        parts["repa_loss"] = repa_loss.detach().item()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trained.parameters(), optim.grad_clip if optim.grad_clip > 0 else math.inf)
    optimizer.step()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loss, parts, grad_norm, lr


class IntervalClock:
    """Wall and process CPU seconds of each logging interval, and whether other work shared the CPU during
    it, read as `Contention` reads a timed point: the process got less than its share of its threads' time,
    or the load average exceeded the cores its threads leave free (another run, or load, held the cores).
    Such intervals are flagged `contended` in the log, with the reason; their wall-clock is load, not cost."""

    def __init__(self, threads: int, device: torch.device):
        self.threads, self.device = threads, device
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> dict[str, Any]:
        from ..profile.measure import Contention
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        reason = Contention.reading(self.device, wall, cpu, self.threads, [Contention.load()]) if self.device.type == "cpu" else ""
        return {"interval_wall_s": wall, "interval_cpu_s": cpu, "contended": bool(reason), "contended_reason": reason}


def train_model(model_spec: ModelRef, data: TrainData, optim: OptimSpec, train: TrainSpec, out_dir: str | Path, *,
                world: World | None = None, stop_after: int | None = None, resume: bool = True,
                progress: bool = True, label: str = "") -> RunResult:
    """Train `model_spec` for `train.steps` optimizer steps, validating every `train.val_every` steps and
    checkpointing every `train.checkpoint_every`. With `resume`, continue from the newest intact checkpoint
    in `out_dir` (`checkpoint.pt`, else the previous one, see `state.latest_state`).
    `stop_after` ends the run early (after a checkpoint) at that step, as an interruption would."""
    world = world or World()
    out_dir = Path(out_dir)
    if train.threads:
        torch.set_num_threads(train.threads)
    device = resolve_device(train.device)
    dtype = default_dtype(device) if train.dtype == "auto" else train.dtype
    settings = settings_dict(model_spec, data, optim, train)

    seed_everything(train.seed)
    model = build_model(model_spec.name, model_spec.preset, **model_spec.overrides).to(device)
    model.gradient_checkpointing = train.gradient_checkpointing
    model.train()
    # REPA (train.repa): a frozen teacher and projectors trained with the model; without it, `trained` is the model.
    repa = RepaTerm(train.repa, model, data.image_size, device, world.distributed) if train.repa is not None else None
    trained = model if repa is None else torch.nn.ModuleList([model, repa.projector])
    optimizer = build_optimizer(trained, optim, device)
    scheduler = build_scheduler(optimizer, optim, train.steps)
    criterion = ReconstructionLoss(train.perceptual_weight, device)
    loss_name = criterion.info.name if repa is None else f"{criterion.info.name} + {repa.label}"

    step, examples_seen, train_seconds = 0, 0, 0.0
    checkpoint = out_dir / CHECKPOINT
    state = latest_state(checkpoint) if resume else None
    if state is not None:
        _same_settings(state["extra"]["settings"], settings, settings_defaults(model_spec, data, optim, train), checkpoint)
        model.load_state_dict(state["state_dict"])
        if repa is not None:
            modules = state["extra"].get("modules", {})
            if "repa_projector" not in modules:
                raise CheckpointError(f"{checkpoint}: holds no REPA projector state; delete {out_dir} to train from the start")
            repa.projector.load_state_dict(modules["repa_projector"])
        optimizer.load_state_dict(state["extra"]["optimizer"])
        scheduler.load_state_dict(state["extra"]["scheduler"])
        step, examples_seen = int(state["step"]), int(state["extra"]["examples_seen"])
        train_seconds = float(state["extra"]["train_seconds"])
        restore_rng_states(state["extra"]["rng"])
    elif world.is_main and (out_dir / LOG).exists():
        (out_dir / LOG).unlink()  # a fresh start: drop the log of a run that left no checkpoint

    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world.distributed else model
    train_source, eval_source = open_sources(data)
    split = evaluation_split(eval_source, data, batch_size=max(train.batch_size, 8)) if world.is_main else None
    log = RecordStore(out_dir / LOG)
    env = environment(device)
    if world.is_main:
        log.append({"kind": "start", "step": step, "loss_name": loss_name, "loss_note": criterion.info.note,
                    "dtype": dtype, "world_size": world.size, "settings": settings, **env})

    def validate() -> None:
        if world.is_main:
            result = evaluate_model(model, split, device, dtype)
            log.append({"kind": "val", "step": step, "seconds": train_seconds, "examples": examples_seen, **result})
            bar.set_postfix_str(f"val psnr {result['psnr']:.2f}", refresh=False)
        world.barrier()

    def save() -> None:
        if world.is_main:
            save_state(checkpoint, model=model, preset=model_spec.preset, optimizer=optimizer, scheduler=scheduler,
                       step=step, examples_seen=examples_seen, train_seconds=train_seconds, settings=settings,
                       modules={"repa_projector": repa.projector} if repa is not None else None)
        world.barrier()

    end = train.steps if stop_after is None else min(train.steps, stop_after)
    bar = tqdm(total=train.steps, initial=step, desc=label or model_spec.name, disable=not (progress and world.is_main),
               dynamic_ncols=True, leave=True)
    if step == 0 and step < end:
        validate()
    batches = training_batches(train_source, data, world, train.batch_size, examples_seen)
    interval = IntervalClock(train.threads or torch.get_num_threads(), device)
    while step < end:
        started = time.perf_counter()
        batch = to_device(next(batches), device)
        loss, parts, grad_norm, lr = training_step(wrapped, trained, batch, criterion, optimizer, scheduler, optim,
                                                   device, dtype, repa)
        train_seconds += time.perf_counter() - started
        step += 1
        examples_seen += train.batch_size * world.size
        bar.update(1)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{label or model_spec.name}: loss is {loss.item()} at step {step}")
        if world.is_main and (step % train.log_every == 0 or step == end):
            log.append({"kind": "train", "step": step, "loss": loss.item(), **parts, "lr": lr,
                        "grad_norm": float(grad_norm), "seconds": train_seconds, **interval.lap()})
            bar.set_postfix_str(f"loss {loss.item():.4f}", refresh=False)
        if step % train.val_every == 0 or step == train.steps:
            validate()
        if step % train.checkpoint_every == 0 or step == end:
            save()
    bar.close()
    if repa is not None:
        repa.close()
    history = [r for r in read_log(out_dir) if r.get("kind") == "val"] if world.is_main else []
    return RunResult(model=model, step=step, train_seconds=train_seconds, loss=loss_name,
                     loss_note=criterion.info.note, device=device, dtype=dtype, validation=history,
                     eval_split=split, environment=env)
