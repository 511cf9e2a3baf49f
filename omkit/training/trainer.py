"""The training loop (Sec. III-B, IV-C): per-task cross-entropy summed over the
tasks of the current curriculum stage, online data transfer, the optimiser and
its schedule, budgets, metrics, checkpoints and the models a run writes.

The parts live beside it: :mod:`.config` (settings), :mod:`.curriculum` (stages, plateau
rule), :mod:`.data` (cases, samplers, regions, patch source), :mod:`.optim` (model,
optimiser, seeds), :mod:`.state` (where a run stands), :mod:`.checkpoints` (``last.pt``),
:mod:`.distributed` (DDP), :mod:`.run_folder`, :mod:`.report` and :mod:`.validation`.

An MC preset trains its independent networks side by side, each on its own
task's patches (their losses share nothing, so one optimiser over all of them
equals separate training). Resuming is bit-exact on CPU: the checkpoint holds
the model, optimiser, scheduler (and AMP scaler), the sampler position, every
process's RNG states and the curriculum stage, and a batch depends only on
(seed, rank, epoch, step).
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omkit.checkpoint import save_model
from omkit.data.sampling import sampler_cache_key
from omkit.devices import autocast, check_precision, convolution_guard, resolve_device

from . import distributed, run_folder, windows
from .checkpoints import (
    load_training_checkpoint,
    model_card,
    rng_state,
    save_training_checkpoint,
    set_rng_state,
)
from .config import TrainConfig, flag, preset_named
from .curriculum import Stage, plan_stages, plateaued, stages_record
from .data import build_augmentation, build_samplers, prepare_data, split_cases
from .guards import TrainingDiverged, fits_in_memory, memory_checked
from .optim import build_model, build_optimizer, build_scaler, build_scheduler, check_model_settings, seed_process
from .patches import iterate_steps
from .preemption import Preempted, StopSignals
from .report import metrics_row, progress_postfix, write_json, write_run_reports
from .state import TrainState
from .transfer import TransferRule, task_targets
from .validation import Validation


class Trainer:
    """One process's training run; :func:`train` is the usual way in."""

    def __init__(self, config: TrainConfig, resume: bool = False, force: bool = False):
        self.claim: run_folder.RunClaim | None = None  # the main process's lock on the run folder
        self.resume, self._committed, self._checkpoint_step = resume, False, None
        self.processes = distributed.start(config.device)
        try:
            self._setup(config, resume, force)
        except BaseException:
            self.close()
            raise

    def _setup(self, config: TrainConfig, resume: bool, force: bool) -> None:
        self.rank, self.world_size = self.processes.rank, self.processes.world_size
        self.is_main = self.processes.is_main
        self.run_dir = run_folder.require_output(config)
        if resume:  # fail fast; checked again under the folder's lock (run_folder.claim, below)
            run_folder.check_resumable(self.run_dir, config, free=self.is_main)  # the others would see that lock
        self.config = config
        self.device = resolve_device(config.device)
        check_precision(config.precision, self.device)
        if config.precision == "bf16" and self.device.type == "cpu" and self.is_main:
            warnings.warn("--precision bf16 on a CPU trains with torch's slower convolutions (oneDNN's bfloat16 "
                          "conv3d weight gradient is wrong for depth-2 maps; omkit.devices.convolution_guard); "
                          "use fp32 on a CPU, bf16 or fp16 on a GPU for speed", stacklevel=3)
        self.preset = preset_named(config.preset)
        self.stages = plan_stages(self.preset, config.stage_epochs, config.epochs)
        self.model_tasks = sorted({t for s in self.stages for t in s.tasks})
        self.transfer = (TransferRule(config.transfer_tumor_threshold, config.transfer_core_threshold)
                         if self.preset.transfer else None)
        # settings errors before anything is deleted or prepared
        self.samplers = build_samplers(config)
        self.augmentation = build_augmentation(config)
        check_model_settings(config)
        split_cases(config)  # the input has cases and --folds/--fold fit them: before anything is built
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        with fits_in_memory(config, "width"):
            self.model = build_model(config, self.device)
        if self.is_main:  # lock the folder and check that it may be used (fast); it is replaced only at _commit
            self.claim = run_folder.claim(self.run_dir, resume, force, config)
        distributed.barrier(self.processes)
        self.data = prepare_data(config, self.samplers, self.model_tasks, self.processes, self.augmentation)
        self.patches, self.cases, self.held_out = self.data.patches, self.data.cases, self.data.held_out
        self.label_convention = self.data.label_convention
        if resume:
            run_folder.check_same_cases(self.run_dir, self.data.case_ids, config.input)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = build_scheduler(config, self.optimizer)
        self.scaler = build_scaler(config)
        seed_process(config.seed, self.rank)
        self.state = TrainState()
        if resume:
            self._load_checkpoint(run_folder.last_checkpoint(self.run_dir))
            self._checkpoint_step = self.state.global_step
        self.net, self._net_tasks = None, None
        self.signals = StopSignals()
        self.validation = Validation(config, self.held_out, self.device, lambda: model_card(
            config, self.model, self.label_convention, self.state, self.stages, self.cases, self.held_out))

    def _commit(self) -> None:
        """Make the run folder this run's, once: with ``--force`` the old run is
        replaced only now, after the settings, the cases and (for a new run)
        the first training step have passed; then config.json is written."""
        if self._committed:
            return
        self._committed = True
        if self.is_main:
            self.claim.commit()
            self._write_config()

    def _check_finite(self, values: list[float], tasks) -> None:
        """A non-finite loss stops the run: no checkpoint or model.pt from the
        diverged weights; the checkpoints before it stay."""
        if all(math.isfinite(values[t]) for t in tasks) and math.isfinite(values[3]):
            return
        state, cfg = self.state, self.config
        state.stopped_by = "diverged"
        if self._committed:
            self._write_reports()  # the metrics up to the step before
        losses = ", ".join(f"task {t + 1} {values[t]}" for t in tasks)
        kept = (f"the checkpoint before it ({run_folder.last_checkpoint(self.run_dir)}, step {self._checkpoint_step}) "
                "is kept" if self._checkpoint_step is not None else "there is no checkpoint before it")
        raise TrainingDiverged(
            f"training diverged: non-finite loss ({losses}) at step {state.global_step + 1} (epoch {state.epoch + 1}, "
            f"stage {state.stage + 1}); no model.pt was written and {kept}; lower {flag('lr')} (was {cfg.lr:g})"
        )

    def _net_for(self, tasks: tuple[int, ...]) -> nn.Module:
        """The training pass for a stage; under DDP wrapped once per stage, so
        that only stages that leave heads unused pay for finding them."""
        if self.net is None or self._net_tasks != tasks:
            grid = windows.grid_of(self.config) if self.config.train_mode == "windows" else None
            net = windows.TaskForward(self.model, grid)
            if self.world_size > 1:
                net = nn.parallel.DistributedDataParallel(
                    net,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    # Heads of tasks not yet in the curriculum get no gradient; and with it on, DDP never
                    # rebuilds its gradient buckets after the first step, so each gradient's summation order
                    # across processes is the same in a run resumed from a checkpoint as in one never
                    # interrupted (bit-exact resume with more than two processes; two sum either way).
                    find_unused_parameters=True,
                )
            self.net, self._net_tasks = net, tasks
        return self.net

    # -- checkpoints and models -------------------------------------------------------
    def _save_checkpoint(self) -> None:
        rng = distributed.gather(self.processes, rng_state(self.device))  # collective: every process takes part
        self._checkpoint_step = self.state.global_step
        if not self.is_main:
            return
        save_training_checkpoint(
            run_folder.last_checkpoint(self.run_dir), config=self.config.to_dict(), world_size=self.world_size,
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            sampler={"seed": self.config.seed, "epoch": self.state.epoch, "step": self.state.step,
                     "pool_sizes": list(self.patches.pool_sizes)},
            state=self.state.to_dict(), rng_per_rank=rng,
        )

    def _load_checkpoint(self, path: Path) -> None:
        payload = load_training_checkpoint(path)
        try:
            self._restore(path, payload)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"{path}: does not fit this run ({type(exc).__name__}: {first}); start a new run") \
                from None

    def _restore(self, path: Path, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState.from_dict(payload["state"])
        per_rank = payload["rng"]["per_rank"]
        if payload["world_size"] != self.world_size:
            warnings.warn(
                f"{path}: saved with {payload['world_size']} processes, resumed with {self.world_size}; "
                "training continues but not bit-exactly", stacklevel=2,
            )
        set_rng_state(per_rank[self.rank % len(per_rank)], self.device)

    def _snapshot(self, path: Path) -> None:
        if self.is_main:
            save_model(self.model, path, card=model_card(self.config, self.model, self.label_convention, self.state,
                                                         self.stages, self.cases, self.held_out))

    # -- outputs ----------------------------------------------------------------------
    def _write_config(self) -> None:
        info = {
            "config": self.config.to_dict(),
            "preset": self.preset.to_dict(),
            "stages": stages_record(self.stages),
            "sampler_keys": [sampler_cache_key(s) for s in self.samplers],  # every sampler option
            "steps_per_epoch": {f"stage{i + 1}": self.patches.steps_per_epoch(s.tasks) for i, s in enumerate(self.stages)},
            "world_size": self.world_size,
            "label_convention": self.label_convention,
            "cases": self.data.case_ids,
            "held_out": [p.name for p in self.held_out],
            "omkit_version": getattr(sys.modules.get("omkit"), "__version__", "unknown"),
            "torch_version": torch.__version__,
        }
        write_json(info, self.run_dir / run_folder.CONFIG)

    def _write_reports(self, extra: dict | None = None) -> None:
        if self.is_main:
            write_run_reports(self.run_dir, self.state, self.config, self.world_size, extra)

    # -- training ---------------------------------------------------------------------
    def _step(self, batches, tasks) -> tuple[list[float], int]:
        with convolution_guard(self.device, self.config.precision):  # forward and backward
            return self._train_step(batches, tasks)

    def _train_step(self, batches, tasks) -> tuple[list[float], int]:
        labels = [None if b is None else np.asarray(b[1]) for b in batches]
        inputs = [None if b is None else torch.as_tensor(b[0]).to(self.device, non_blocking=True) for b in batches]
        transfers_np = self.transfer.select(labels, set(tasks)) if self.transfer is not None else {}
        targets = task_targets(labels, transfers_np)
        transfers = {d: [(s, torch.as_tensor(i)) for s, i in pairs] for d, pairs in transfers_np.items()} or None
        with autocast(self.device, self.config.precision):
            outputs = self.net(inputs, transfers)
        losses, values = [], [math.nan] * 3
        for t in tasks:
            target = torch.as_tensor(targets[t]).to(self.device, dtype=torch.long, non_blocking=True)
            loss = F.cross_entropy(outputs[t].float(), target)
            losses.append(loss)
            values[t] = loss.detach()
        total = torch.stack(losses).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        reported = torch.tensor([float(v) for v in values] + [float(total.detach())], dtype=torch.float64)
        reported = distributed.mean(self.processes, reported, self.device)  # the mean over processes
        own = sum(int(b[0].shape[0]) for b in batches if b is not None) * self.world_size
        return reported.tolist(), own

    def _should_stop(self, session_start: float, base_elapsed: float) -> str:
        cfg, state = self.config, self.state
        reason = ""
        if cfg.max_steps is not None and state.global_step >= cfg.max_steps:
            reason = "max_steps"
        elif cfg.max_minutes is not None and base_elapsed + (time.perf_counter() - session_start) >= cfg.max_minutes * 60:
            reason = "max_minutes"
        if self.world_size > 1 and cfg.max_minutes is not None:
            out_of_time = distributed.main_decides(self.processes, reason == "max_minutes", self.device)
            if out_of_time and not reason:
                reason = "max_minutes"
            elif not out_of_time and reason == "max_minutes":
                reason = ""
        if distributed.any_process(self.processes, bool(self.signals.received), self.device):
            reason = f"signal {self.signals.received or 'on another process'}"
        return reason

    def run(self) -> Path:
        """Train to the end of the schedule or a budget; on a stop signal, :class:`Preempted` once the
        checkpoint is written."""
        with self.signals:
            run_dir = self._run()
        if self.state.stopped_by.startswith("signal"):
            raise Preempted(self.run_dir, self.state.stopped_by.split(" ", 1)[1], self.state.global_step)
        return run_dir

    def _run(self) -> Path:
        from tqdm.auto import tqdm

        cfg, state = self.config, self.state
        if self.resume:
            self._commit()  # a resumed run is there already: this rewrites config.json
        if state.finished:
            if self.is_main:
                print(f"omkit train: {self.run_dir} has finished training; nothing to resume", flush=True)
            return self.run_dir
        session_start, base_elapsed = time.perf_counter(), state.elapsed_s
        window_start = time.perf_counter()
        stop = self._should_stop(session_start, base_elapsed) if self.resume else ""
        if stop:  # a budget the run has reached already (a job run again): no step beyond it
            if self.is_main:
                print(f"omkit train: {self.run_dir} has reached its budget ({stop}); nothing to train", flush=True)
            return self.run_dir
        while state.stage < len(self.stages) and not stop:
            stage = self.stages[state.stage]
            steps = self.patches.steps_per_epoch(stage.tasks)
            while state.stage_epoch < stage.epochs and not stop:
                bar = tqdm(
                    total=steps, initial=state.step, disable=not (cfg.progress and self.is_main), dynamic_ncols=True,
                    desc=f"stage {state.stage + 1}/{len(self.stages)} epoch {state.epoch + 1}/{self._total_epochs()}",
                    unit="step", leave=True, mininterval=0.5,
                )
                self._net_for(stage.tasks).train()
                steps_iter = iterate_steps(self.patches, state.epoch, stage.tasks, state.step, cfg.workers)
                for step, batches in memory_checked(steps_iter, cfg):
                    with fits_in_memory(cfg, "patch_size", "batch_per_task", "width"):
                        values, own = self._step(batches, stage.tasks)
                    self._check_finite(values, stage.tasks)
                    self._commit()  # after the first step: it fits in memory and its losses are finite
                    state.step = step + 1
                    state.global_step += 1
                    state.patches += own
                    state.elapsed_s = base_elapsed + (time.perf_counter() - session_start)
                    state.add_losses(values, own)
                    if state.window_count >= cfg.log_every or state.step == steps:
                        now = time.perf_counter()
                        epoch_steps = self.patches.steps_per_epoch(self.stages[state.stage].tasks)
                        row = metrics_row(state, self.optimizer.param_groups[0]["lr"], epoch_steps,
                                          now - window_start)
                        state.rows.append(row)
                        bar.set_postfix_str(progress_postfix(row), refresh=False)
                        window_start = now
                    bar.update(1)
                    if self.validation.after_step(self.model, state, self.run_dir, self.processes):
                        self._net_for(stage.tasks).train()
                    stop = self._should_stop(session_start, base_elapsed)
                    if stop:
                        break
                    if state.global_step % cfg.checkpoint_every == 0 and state.step < steps:
                        self._save_checkpoint()
                bar.close()
                if state.step >= steps:
                    self._end_epoch(stage)
                self._save_checkpoint()
                self._write_reports()
                window_start = time.perf_counter()  # the rate counts training, not writing
            if state.stage_epoch >= stage.epochs:
                self._snapshot(run_folder.stage_checkpoint(self.run_dir, state.stage + 1))
                state.stage += 1
                state.stage_epoch = 0
                if state.stage < len(self.stages):
                    state.stage_starts.append(state.global_step)
        state.finished = state.stage >= len(self.stages)
        state.stopped_by = stop or "finished"
        self._commit()
        self.validation.after_step(self.model, state, self.run_dir, self.processes, last=True)
        self._save_checkpoint()
        extra = distributed.consistency_report(self.processes, self.model, self.patches.pool(0, self.stages[0].tasks[0]))
        self._snapshot(self.run_dir / run_folder.MODEL)
        self._write_reports(extra)
        if self.is_main and cfg.progress:
            print(
                f"omkit train: {state.stopped_by} after {state.global_step} steps ({state.epoch} epochs, "
                f"{state.patches / max(state.elapsed_s, 1e-9):.1f} patches/s); model: {self.run_dir / run_folder.MODEL}",
                flush=True,
            )
        return self.run_dir

    def _total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def _end_epoch(self, stage: Stage) -> None:
        state = self.state
        mean = state.take_epoch()
        state.epoch_rows.append({
            "epoch": state.epoch + 1, "stage": state.stage + 1, "lr": self.optimizer.param_groups[0]["lr"],
            **{f"loss_task{t + 1}": mean[t] for t in range(3)}, "loss_total": mean[3],
            "steps": state.global_step,
        })
        self.scheduler.step()
        state.epoch += 1
        state.stage_epoch += 1
        state.step = 0
        if plateaued(self.config.plateau_tol, stage, state.epoch_rows, state.stage_epoch,
                     last_stage=state.stage == len(self.stages) - 1):
            state.stage_epoch = stage.epochs  # the stage is done

    def close(self) -> None:
        if self.claim is not None:  # a run that never started leaves the folder as it was
            self.claim.close()
            self.claim = None
        distributed.stop(self.processes)


def train(config: TrainConfig | dict, resume: bool = False, force: bool = False) -> Path:
    """Train as ``config`` says (a :class:`TrainConfig` or a dict of its fields);
    returns the run folder, which holds ``model.pt`` at the end. Under
    ``torchrun`` every process calls this; only the main one writes."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    trainer = Trainer(config, resume=resume, force=force)
    try:
        return trainer.run()
    finally:
        trainer.close()
