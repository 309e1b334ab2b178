"""The training loop: one `Trainer` for a single process and for every rank under `torchrun`."""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from models import build_model, model_config
from ..distributed import World
from ..errors import CheckpointError, ConfigError, HarnessError
from ..provenance import environment
from ..records import RecordStore
from ..runtime import autocast, default_dtype, resolve_device
from ..schema import ModelRef
from .config import OptimSpec, TrainData, TrainSpec, settings_defaults, settings_dict
from .data import EvalSplit, evaluation_split, open_sources, to_device, training_batches
from .loss import ReconstructionLoss
from .optim import build_optimizer, build_scheduler
from .repa import RepaLoss
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


def _model_config(section: dict[str, Any]) -> dict[str, Any] | None:
    """The config a run's model section builds (its variant's preset with the overrides), or None when
    it names no variant registered here."""
    try:
        return model_config(section["name"], section.get("preset", "paper"), **(section.get("overrides") or {})).to_dict()
    except (KeyError, HarnessError):
        return None


def _same_settings(saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any], path: Path) -> None:
    """A checkpoint resumes only under the settings it was written with. An option the checkpoint
    predates counts as its default: adding an option to the harness must not strand finished runs. The
    model is the config it builds, however it is named: a preset renamed, or overrides folded into a
    preset, is the same model."""
    for section, values in current.items():
        model = None
        if section == "model":
            old_model = _model_config({**defaults.get(section, {}), **saved.get(section, {})})
            model = old_model is not None and old_model == _model_config(values)
        for key, value in values.items():
            if model and key in ("preset", "overrides"):
                continue
            old = saved.get(section, {}).get(key, defaults.get(section, {}).get(key))
            if json.dumps(old, sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
                raise ConfigError(f"{path}: was written with {section}.{key}={old!r}, this run asks for {value!r}; "
                                 f"use another output directory or delete the checkpoint to start over")


# ------------------------------------------------------------------------------------- one step


class ExtraLoss(Protocol):
    """A term added to the reconstruction loss at every step (REPA's alignment is one). `capture()` is
    entered around the step's forward pass, for a term that reads what the model computes inside it;
    `modules` train with the model and travel in its checkpoints under their names."""
    key: str                                # the term's entry in the step's loss parts and in the log
    title: str                              # what its modules are, for a checkpoint that lacks them
    label: str                              # the term in the name of the optimized loss
    weight: float
    modules: dict[str, torch.nn.Module]

    def capture(self) -> contextlib.AbstractContextManager[None]: ...
    def loss(self, model: torch.nn.Module, batch: dict[str, Any], outputs: torch.Tensor) -> torch.Tensor: ...
    def close(self) -> None: ...


@dataclass
class StepOutput:
    loss: torch.Tensor
    parts: dict[str, float]                 # the loss's terms, as logged
    grad_norm: torch.Tensor                 # before clipping
    lr: float                               # the learning rate the step used


@dataclass
class TrainStep:
    """One optimizer step on a batch already on `device`: forward, loss (with the extra losses' terms),
    backward, clipping, the step and the schedule. The Trainer runs it, and the clean cost of a step is
    measured by timing it alone, outside any run (`kinds.measure_step_costs`)."""
    model: torch.nn.Module                  # what runs the forward: the model, DDP-wrapped under torchrun
    params: torch.nn.Module                 # what is optimized and clipped: the model and the extra losses' modules
    criterion: ReconstructionLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_clip: float                        # 0: no clipping (the norm is still measured)
    device: torch.device
    dtype: str
    extra_losses: Sequence[ExtraLoss] = ()

    def __call__(self, batch: dict[str, Any]) -> StepOutput:
        with contextlib.ExitStack() as forward:
            forward.enter_context(autocast(self.device, self.dtype))
            for extra in self.extra_losses:
                forward.enter_context(extra.capture())
            render = self.model(batch["input_images"], batch["input_c2w"], batch["input_fxfycxcy"],
                                batch["target_c2w"], batch["target_fxfycxcy"])
        loss, parts = self.criterion(render, batch["target_images"])
        for extra in self.extra_losses:
            with autocast(self.device, self.dtype):
                term = extra.loss(self.model, batch, render)
            loss = loss + extra.weight * term
            parts[extra.key] = term.detach().item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params.parameters(), self.grad_clip if self.grad_clip > 0 else math.inf)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return StepOutput(loss, parts, grad_norm, lr)


# ----------------------------------------------------------------------------------------- clocks


@dataclass
class TrainClock:
    """Where a run stands; checkpoints save it and a resume continues it. `train_seconds` counts fetching
    batches and stepping, not validation or checkpoints."""
    step: int = 0
    examples_seen: int = 0                  # of the global stream: every rank's share together
    train_seconds: float = 0.0

    def advance(self, seconds: float, examples: int) -> None:
        self.step += 1
        self.examples_seen += examples
        self.train_seconds += seconds


class IntervalClock:
    """Wall and process CPU seconds of each logging interval, and whether other work shared the CPU during
    it, read as `Contention` reads a timed point: the process got less than its share of its threads' time,
    or the load average exceeded the cores its threads leave free (another run, or load, held the cores).
    Such intervals are flagged `contended` in the log, with the reason; their wall-clock is load, not cost."""

    def __init__(self, threads: int, device: torch.device):
        self.threads, self.device = threads, device
        self.restart()

    def restart(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> dict[str, Any]:
        from ..profile.measure import Contention
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.restart()
        reason = Contention.reading(self.device, wall, cpu, self.threads, [Contention.load()]) if self.device.type == "cpu" else ""
        return {"interval_wall_s": wall, "interval_cpu_s": cpu, "contended": bool(reason), "contended_reason": reason}


# ---------------------------------------------------------------------------------------- trainer


def extra_losses(train: TrainSpec, model: torch.nn.Module, image_size: int, device: torch.device,
                 world: World) -> list[ExtraLoss]:
    """The terms `train` adds to the reconstruction loss."""
    return [RepaLoss(train.repa, model, image_size, device, world.distributed)] if train.repa is not None else []


class Trainer:
    """Trains `model_spec` for `train.steps` optimizer steps, validating every `train.val_every` steps and
    checkpointing every `train.checkpoint_every`, as one process or as every rank of a `torchrun` world.

    Construction builds the model, its extra losses, the optimizer, schedule and loss; with `resume`,
    continues from the newest intact checkpoint in `out_dir` (`checkpoint.pt`, else the previous one, see
    `state.latest_state`); then opens the data and starts the log. `fit` runs the loop."""

    def __init__(self, model_spec: ModelRef, data: TrainData, optim: OptimSpec, train: TrainSpec, out_dir: str | Path, *,
                 world: World | None = None, resume: bool = True, progress: bool = True, label: str = ""):
        self.model_spec, self.data, self.optim, self.train = model_spec, data, optim, train
        self.world, self.out_dir = world or World(), Path(out_dir)
        self.checkpoint, self.progress, self.label = self.out_dir / CHECKPOINT, progress, label or model_spec.name
        if train.threads:
            torch.set_num_threads(train.threads)
        self.device = resolve_device(train.device)
        self.dtype = default_dtype(self.device) if train.dtype == "auto" else train.dtype
        self.settings = settings_dict(model_spec, data, optim, train)
        self._build()
        self.clock = TrainClock()
        state = latest_state(self.checkpoint) if resume else None
        if state is not None:
            self._resume(state)
        elif self.world.is_main and (self.out_dir / LOG).exists():
            (self.out_dir / LOG).unlink()  # a fresh start: drop the log of a run that left no checkpoint
        wrapped = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if self.world.distributed else self.model
        self.optimize = TrainStep(wrapped, self.trained, self.criterion, self.optimizer, self.scheduler, optim.grad_clip,
                                  self.device, self.dtype, self.extra_losses)
        self.train_source, eval_source = open_sources(data)
        self.split = evaluation_split(eval_source, data, batch_size=max(train.batch_size, 8)) if self.world.is_main else None
        self.log = RecordStore(self.out_dir / LOG)
        self.environment = environment(self.device)
        if self.world.is_main:
            self.log.append({"kind": "start", "step": self.clock.step, "loss_name": self.loss_name, "loss_note": self.criterion.info.note,
                             "dtype": self.dtype, "world_size": self.world.size, "settings": self.settings, **self.environment})
        self.interval = IntervalClock(train.threads or torch.get_num_threads(), self.device)
        self.bar: tqdm | None = None

    def _build(self) -> None:
        # The order of construction is the order of random draws: it fixes the initial weights of a seed.
        seed_everything(self.train.seed)
        spec = self.model_spec
        self.model = build_model(spec.name, spec.preset, **spec.overrides).to(self.device)
        self.model.gradient_checkpointing = self.train.gradient_checkpointing
        self.model.train()
        self.extra_losses = extra_losses(self.train, self.model, self.data.image_size, self.device, self.world)
        modules = [module for extra in self.extra_losses for module in extra.modules.values()]
        self.trained = torch.nn.ModuleList([self.model, *modules]) if modules else self.model
        self.optimizer = build_optimizer(self.trained, self.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, self.optim, self.train.steps)
        self.criterion = ReconstructionLoss(self.train.perceptual_weight, self.device)
        self.loss_name = " + ".join([self.criterion.info.name, *(extra.label for extra in self.extra_losses)])

    def _resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint, which must have been written under this run's settings."""
        saved = state["extra"]
        defaults = settings_defaults(self.model_spec, self.data, self.optim, self.train)
        _same_settings(saved["settings"], self.settings, defaults, self.checkpoint)
        self.model.load_state_dict(state["state_dict"])
        for extra in self.extra_losses:
            for name, module in extra.modules.items():
                if name not in saved.get("modules", {}):
                    raise CheckpointError(f"{self.checkpoint}: holds no {extra.title} state; "
                                          f"delete {self.out_dir} to train from the start")
                module.load_state_dict(saved["modules"][name])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.clock = TrainClock(int(state["step"]), int(saved["examples_seen"]), float(saved["train_seconds"]))
        restore_rng_states(saved["rng"])

    def step(self, batch: dict[str, Any]) -> StepOutput:
        """One optimizer step on a batch as the data yields it (on the CPU)."""
        return self.optimize(to_device(batch, self.device))

    def fit(self, stop_after: int | None = None) -> RunResult:
        """Train from where the run stands to `train.steps`. `stop_after` ends the run early (after a
        checkpoint) at that step, as an interruption would. A Trainer fits once: at the end the extra
        losses take their hooks off the model, which the result hands back."""
        end = self.train.steps if stop_after is None else min(self.train.steps, stop_after)
        self.bar = tqdm(total=self.train.steps, initial=self.clock.step, desc=self.label,
                        disable=not (self.progress and self.world.is_main), dynamic_ncols=True, leave=True)
        try:
            if self.clock.step == 0 and end > 0:
                self._validate()
            batches = training_batches(self.train_source, self.data, self.world, self.train.batch_size, self.clock.examples_seen)
            self.interval.restart()
            while self.clock.step < end:
                self._advance(batches, end)
                if self.clock.step % self.train.val_every == 0 or self.clock.step == self.train.steps:
                    self._validate()
                if self.clock.step % self.train.checkpoint_every == 0 or self.clock.step == end:
                    self._save()
        finally:
            self.bar.close()
            for extra in self.extra_losses:
                extra.close()  # the model leaves the run without the extra losses' hooks
        return self._result()

    def _advance(self, batches: Iterator[dict[str, Any]], end: int) -> None:
        """The next step, counted and logged. Fetching its batch counts as training time, as the step does."""
        started = time.perf_counter()
        out = self.step(next(batches))
        self.clock.advance(time.perf_counter() - started, self.train.batch_size * self.world.size)
        self.bar.update(1)
        if not math.isfinite(out.loss.item()):
            raise FloatingPointError(f"{self.label}: loss is {out.loss.item()} at step {self.clock.step}")
        if self.world.is_main and (self.clock.step % self.train.log_every == 0 or self.clock.step == end):
            self.log.append({"kind": "train", "step": self.clock.step, "loss": out.loss.item(), **out.parts, "lr": out.lr,
                             "grad_norm": float(out.grad_norm), "seconds": self.clock.train_seconds, **self.interval.lap()})
            self.bar.set_postfix_str(f"loss {out.loss.item():.4f}", refresh=False)

    def _validate(self) -> None:
        """Rank 0 validates on the fixed split; the other ranks wait for it."""
        if self.world.is_main:
            result = evaluate_model(self.model, self.split, self.device, self.dtype)
            self.log.append({"kind": "val", "step": self.clock.step, "seconds": self.clock.train_seconds,
                             "examples": self.clock.examples_seen, **result})
            self.bar.set_postfix_str(f"val psnr {result['psnr']:.2f}", refresh=False)
        self.world.barrier()

    def _save(self) -> None:
        if self.world.is_main:
            modules = {name: module for extra in self.extra_losses for name, module in extra.modules.items()}
            save_state(self.checkpoint, model=self.model, preset=self.model_spec.preset, optimizer=self.optimizer,
                       scheduler=self.scheduler, step=self.clock.step, examples_seen=self.clock.examples_seen,
                       train_seconds=self.clock.train_seconds, settings=self.settings, modules=modules or None)
        self.world.barrier()

    def _result(self) -> RunResult:
        history = [r for r in read_log(self.out_dir) if r.get("kind") == "val"] if self.world.is_main else []
        return RunResult(model=self.model, step=self.clock.step, train_seconds=self.clock.train_seconds, loss=self.loss_name,
                         loss_note=self.criterion.info.note, device=self.device, dtype=self.dtype, validation=history,
                         eval_split=self.split, environment=self.environment)


def train_model(model_spec: ModelRef, data: TrainData, optim: OptimSpec, train: TrainSpec, out_dir: str | Path, *,
                world: World | None = None, stop_after: int | None = None, resume: bool = True,
                progress: bool = True, label: str = "") -> RunResult:
    """A `Trainer` built and fitted in one call."""
    return Trainer(model_spec, data, optim, train, out_dir, world=world, resume=resume, progress=progress,
                   label=label).fit(stop_after)
