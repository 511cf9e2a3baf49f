"""OM-Net training (Sec. III-B, IV-C): curriculum stages, online data transfer,
per-task cross-entropy summed, SGD with the paper's schedule, atomic resumable
checkpoints, DDP.

Stages come from the preset: with ``curriculum`` stage 1 trains task 1, stage 2
tasks 1-2, stage 3 tasks 1-3 (``stage_epochs``, paper 1, 1, 18); without it
(``omnet0``, ``omnetd``, the MC baselines) every task of the model trains from
the start for the same total number of epochs. ``transfer`` switches online
data transfer on. An MC preset trains its independent networks side by side,
each on its own task's patches (their losses share nothing, so one optimiser
over all of them equals separate training).

Resuming is bit-exact on CPU: the checkpoint holds the model, optimiser,
scheduler (and AMP scaler), the sampler position, every process's RNG states
and the curriculum stage, and a batch depends only on (seed, rank, epoch, step).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omkit.checkpoint import save_model
from omkit.data import CaseError, PreprocessedCache, find_cases, kfold_split
from omkit.data.preprocess import PREPROCESSING
from omkit.fileio import atomic_torch_save

from .config import TrainConfig
from .patches import TaskPatches, iterate_steps, region_indices
from .report import plot_losses, write_json, write_metrics_csv
from .transfer import TransferRule, task_targets

CHECKPOINT_FORMAT = "omkit-train-checkpoint"
CHECKPOINT_VERSION = 1
# what a run folder holds; --force deletes a folder only when it holds nothing else
RUN_OUTPUTS = frozenset({"checkpoints", "config.json", "metrics.csv", "metrics.json", "loss_curve.png", "model.pt"})


@dataclass(frozen=True)
class Stage:
    tasks: tuple[int, ...]
    epochs: int


def plan_stages(preset, stage_epochs, epochs: int | None = None) -> list[Stage]:
    """The curriculum of ``preset``: (tasks, epochs) per stage; stages with 0 epochs are dropped."""
    num_tasks = preset.num_tasks if preset.architecture == "mc" else 3
    stage_epochs = list(stage_epochs)
    if preset.curriculum and num_tasks == 3:
        if epochs is not None:
            last = epochs - sum(stage_epochs[:2])
            if last < 1:
                raise ValueError(f"--epochs {epochs} leaves no epoch for stage 3 after stages 1-2 ({stage_epochs[:2]})")
            stage_epochs[2] = last
        stages = [Stage(tuple(range(k + 1)), e) for k, e in enumerate(stage_epochs) if e > 0]
    else:
        stages = [Stage(tuple(range(num_tasks)), epochs if epochs is not None else sum(stage_epochs))]
    return stages


@dataclass
class TrainState:
    stage: int = 0
    stage_epoch: int = 0  # epochs finished in the current stage
    epoch: int = 0  # epochs finished in total (the lr schedule and sampler count these)
    step: int = 0  # steps finished in the current epoch
    global_step: int = 0
    elapsed_s: float = 0.0  # training time over all sessions (the --max-minutes budget)
    patches: int = 0  # own patches seen by all processes
    rows: list = field(default_factory=list)  # metrics rows
    epoch_rows: list = field(default_factory=list)
    stage_starts: list = field(default_factory=lambda: [0])
    finished: bool = False
    stopped_by: str = ""
    # running loss sums (task 1-3, total) of the current log window and epoch,
    # kept here so that a resumed run reports exactly what a straight one does
    window_sums: list = field(default_factory=lambda: [0.0] * 4)
    window_counts: list = field(default_factory=lambda: [0] * 4)
    window_count: int = 0
    window_patches: int = 0
    epoch_sums: list = field(default_factory=lambda: [0.0] * 4)
    epoch_counts: list = field(default_factory=lambda: [0] * 4)

    def add_losses(self, values, patches: int) -> None:
        for i, v in enumerate(values):
            if not math.isnan(v):
                self.window_sums[i] += v
                self.window_counts[i] += 1
                self.epoch_sums[i] += v
                self.epoch_counts[i] += 1
        self.window_count += 1
        self.window_patches += patches

    def take_window(self) -> tuple[list[float], int]:
        mean = [s / c if c else math.nan for s, c in zip(self.window_sums, self.window_counts)]
        patches = self.window_patches
        self.window_sums, self.window_counts = [0.0] * 4, [0] * 4
        self.window_count = self.window_patches = 0
        return mean, patches

    def take_epoch(self) -> list[float]:
        mean = [s / c if c else math.nan for s, c in zip(self.epoch_sums, self.epoch_counts)]
        self.epoch_sums, self.epoch_counts = [0.0] * 4, [0] * 4
        return mean


class _TaskForward(nn.Module):
    """``forward`` = ``model.forward_tasks`` so DDP can wrap the training pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, transfers):
        return self.model.forward_tasks(inputs, transfers)


def _distributed() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, force: bool = False):
        import omkit

        self.rank, self.world_size, self.local_rank = _distributed()
        self._owns_process_group = False
        if self.world_size > 1 and not torch.distributed.is_initialized():
            on_gpu = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
            backend = "nccl" if on_gpu else "gloo"
            if on_gpu:
                torch.cuda.set_device(self.local_rank)
            torch.distributed.init_process_group(backend=backend)
            self._owns_process_group = True
        self.is_main = self.rank == 0
        if not config.out:
            raise ValueError("--out: a run folder is required")
        self.run_dir = Path(config.out)
        self._resuming = resume
        if resume:
            config = self._resumed_config(config)
        self.config = config
        self.device = self._resolve_device(config.device)
        self.preset = omkit.get_preset(config.preset)
        self.stages = plan_stages(self.preset, config.stage_epochs, config.epochs)
        self.model_tasks = sorted({t for s in self.stages for t in s.tasks})
        self.transfer = TransferRule(config.tumor_threshold, config.core_threshold) if self.preset.transfer else None
        if self.is_main and not resume:
            self._clear_run_dir(force)  # before the (slow) data preparation: fail fast
        self._barrier()
        self._prepare_data()
        if self.is_main:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._build(resume)

    # -- setup ------------------------------------------------------------------------
    def _resolve_device(self, name: str) -> torch.device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if self.config.amp and name == "cpu":
            raise ValueError("--amp: mixed precision needs a CUDA device")
        if name == "cuda" and self.world_size > 1:
            name = f"cuda:{self.local_rank}"  # one GPU per process under torchrun
        return torch.device(name)

    def _resumed_config(self, given: TrainConfig) -> TrainConfig:
        config_path = self.run_dir / "config.json"
        if not (self.run_dir / "checkpoints" / "last.pt").is_file():
            raise FileNotFoundError(f"{self.run_dir}: nothing to resume (no checkpoints/last.pt)")
        saved = TrainConfig.load(config_path)
        differs = saved.differences(given)
        if differs:
            a, b = saved.to_dict(), given.to_dict()
            name = differs[0]
            raise ValueError(
                f"--{name.replace('_', '-')}: the run in {self.run_dir} used {a[name]!r}, not {b[name]!r}; "
                "start a new run to change it"
            )
        return given

    def _clear_run_dir(self, force: bool) -> None:
        run = self.run_dir
        if run.exists() and not run.is_dir():
            raise FileExistsError(f"{run}: exists and is not a folder")
        if run.exists() and any(run.iterdir()):
            if not force:
                raise FileExistsError(f"{run}: run folder exists; pass --force to start over or --resume to continue")
            foreign = [p.name for p in run.iterdir() if p.name not in RUN_OUTPUTS and not p.name.startswith(".")]
            if foreign:
                raise FileExistsError(
                    f"{run}: not an omkit run folder (holds {foreign[0]!r}); refusing to delete it"
                )
            shutil.rmtree(run)

    def _barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def _prepare_data(self) -> None:
        """Find, split, validate and preprocess (through the cache) every case
        before training starts; the main process fills the cache first."""
        cfg = self.config
        case_dirs = find_cases(cfg.data)
        held_out: list[Path] = []
        if cfg.folds is not None:
            case_dirs, held_out = kfold_split(case_dirs, cfg.folds, cfg.fold, seed=0)
        self.cache = PreprocessedCache(cfg.cache_dir)
        settings = dict(label_convention=cfg.label_convention, with_label=True)
        import omkit

        from omkit.plugins.samplers import parse_sampler_spec

        registry = omkit.get_plugins().registry("sampler")
        samplers = [parse_sampler_spec(spec, registry, cfg.dilation) for spec in cfg.samplers]
        self.samplers = samplers

        def load_all():
            cases, dirs = [], []
            for case_dir in case_dirs:
                try:
                    pre = self.cache.load(case_dir, **settings)
                except CaseError as exc:
                    if not cfg.skip_bad_cases:
                        raise
                    if self.is_main:
                        warnings.warn(f"skipping case: {exc}", stacklevel=2)
                    continue
                cases.append(pre)
                dirs.append(case_dir)
            if not cases:
                raise CaseError(f"{cfg.data}: no usable cases left after skipping the bad ones")
            regions = {
                t: [region_indices(self.samplers[t], pre, self.cache, d, settings) for pre, d in zip(cases, dirs)]
                for t in self.model_tasks
            }
            return cases, dirs, regions

        if self.is_main:
            cases, dirs, regions = load_all()
        self._barrier()
        if not self.is_main:
            cases, dirs, regions = load_all()
        self.cases, self.case_dirs, self.held_out = cases, dirs, held_out
        if self._resuming:
            before = json.loads((self.run_dir / "config.json").read_text(encoding="utf-8")).get("cases")
            now = [pre.case_id for pre in cases]
            if before is not None and before != now:
                raise ValueError(
                    f"--data: {cfg.data} gives other training cases ({len(now)}) than the run in "
                    f"{self.run_dir} used ({len(before)}); resume with the same cases or start a new run"
                )
        self.patches = TaskPatches(
            cases, samplers, cfg.patch_size, cfg.patches_per_epoch, cfg.batch_per_task,
            seed=cfg.seed, rank=self.rank, world_size=self.world_size, tasks=self.model_tasks, regions=regions,
        )
        conventions = sorted({pre.convention for pre in cases})
        self.label_convention = conventions[0] if len(conventions) == 1 else (cfg.label_convention or conventions[0])

    def _build(self, resume: bool) -> None:
        import omkit

        cfg = self.config
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # identical initial weights on every process
        self.model = omkit.create_model(cfg.preset, width=cfg.width, **cfg.model_kw).to(self.device)
        if cfg.optimizer == "sgd":  # the paper's (Caffe) solver
            self.optimizer = torch.optim.SGD(
                self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        else:  # converges in far fewer steps: for budgets of minutes, not epochs
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp)
        # each process its own dropout stream (and numpy / python streams, for plug-ins)
        torch.manual_seed(cfg.seed * 1_000_003 + self.rank + 1)
        np.random.seed((cfg.seed * 1_000_003 + self.rank + 1) % 2**32)
        random.seed(cfg.seed * 1_000_003 + self.rank + 1)
        self.state = TrainState()
        if resume:
            self._load_checkpoint(self.run_dir / "checkpoints" / "last.pt")
        self.net, self._net_tasks = None, None

    def _net_for(self, tasks: tuple[int, ...]) -> nn.Module:
        """The training pass for a stage; under DDP wrapped once per stage, so
        that only stages that leave heads unused pay for finding them."""
        if self.net is None or self._net_tasks != tasks:
            net = _TaskForward(self.model)
            if self.world_size > 1:
                net = nn.parallel.DistributedDataParallel(
                    net,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    # heads of tasks not yet in the curriculum get no gradient
                    find_unused_parameters=set(tasks) != set(self.model_tasks),
                )
            self.net, self._net_tasks = net, tasks
        return self.net

    # -- checkpoints ------------------------------------------------------------------
    def _rng_states(self) -> dict:
        local = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
        if self.world_size > 1:
            gathered = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, local)
            return {"per_rank": gathered}
        return {"per_rank": [local]}

    def _save_checkpoint(self) -> None:
        rng = self._rng_states()  # collective: every process takes part
        if not self.is_main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "world_size": self.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": {"seed": self.config.seed, "epoch": self.state.epoch, "step": self.state.step,
                        "pool_sizes": self.patches.pool_sizes},
            "state": asdict(self.state),
            "rng": rng,
        }
        atomic_torch_save(payload, self.run_dir / "checkpoints" / "last.pt")

    def _load_checkpoint(self, path: Path) -> None:
        try:
            # our own file: it holds numpy / python RNG states, which need full unpickling
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ValueError(f"{path}: unreadable training checkpoint ({type(exc).__name__}: {exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not an omkit training checkpoint")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState(**payload["state"])
        per_rank = payload["rng"]["per_rank"]
        if payload["world_size"] != self.world_size:
            warnings.warn(
                f"{path}: saved with {payload['world_size']} processes, resumed with {self.world_size}; "
                "training continues but not bit-exactly", stacklevel=2,
            )
        rng = per_rank[self.rank % len(per_rank)]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])

    def _snapshot(self, path: Path) -> None:
        if self.is_main:
            save_model(self.model, path, **self._model_meta())

    def _model_meta(self) -> dict:
        cfg = self.config
        return {
            "label_convention": self.label_convention,
            "preprocessing": {k: v for k, v in PREPROCESSING.items() if k != "version"},
            "patch_size": list(cfg.patch_size),
            "training": {
                "epochs": self.state.epoch,
                "steps": self.state.global_step,
                "stage": self.state.stage + (0 if self.state.finished else 1),
                "stages": [{"tasks": [t + 1 for t in s.tasks], "epochs": s.epochs} for s in self.stages],
                "cases": [pre.case_id for pre in self.cases],
                "held_out": [p.name for p in self.held_out],
                "fold": cfg.fold,
                "folds": cfg.folds,
                "seed": cfg.seed,
                "stopped_by": self.state.stopped_by,
            },
        }

    # -- outputs ----------------------------------------------------------------------
    def _write_config(self) -> None:
        import omkit

        info = {
            "config": self.config.to_dict(),
            "preset": self.preset.to_dict(),
            "stages": [{"tasks": [t + 1 for t in s.tasks], "epochs": s.epochs} for s in self.stages],
            "steps_per_epoch": {f"stage{i + 1}": self.patches.steps_per_epoch(s.tasks) for i, s in enumerate(self.stages)},
            "world_size": self.world_size,
            "label_convention": self.label_convention,
            "cases": [pre.case_id for pre in self.cases],
            "held_out": [p.name for p in self.held_out],
            "omkit_version": omkit.__version__,
            "torch_version": torch.__version__,
        }
        write_json(info, self.run_dir / "config.json")

    def _write_reports(self, extra: dict | None = None) -> None:
        if not self.is_main:
            return
        state = self.state
        write_metrics_csv(state.rows, self.run_dir / "metrics.csv")
        summary = {
            "preset": self.config.preset,
            "finished": state.finished,
            "stopped_by": state.stopped_by,
            "epochs": state.epoch,
            "steps": state.global_step,
            "patches": state.patches,
            "elapsed_s": round(state.elapsed_s, 3),
            "patches_per_s": round(state.patches / state.elapsed_s, 3) if state.elapsed_s else None,
            "world_size": self.world_size,
            "per_epoch": state.epoch_rows,
        }
        summary.update(extra or {})
        write_json(summary, self.run_dir / "metrics.json")
        if state.rows:
            plot_losses(state.rows, state.stage_starts, self.run_dir / "loss_curve.png",
                        title=f"{self.config.preset} (width {self.config.width:g})")

    # -- training ---------------------------------------------------------------------
    def _step(self, batches, tasks) -> tuple[list[float], int]:
        labels = [None if b is None else np.asarray(b[1]) for b in batches]
        inputs = [None if b is None else torch.as_tensor(b[0]).to(self.device, non_blocking=True) for b in batches]
        transfers_np = self.transfer.select(labels, set(tasks)) if self.transfer is not None else {}
        targets = task_targets(labels, transfers_np)
        transfers = {d: [(s, torch.as_tensor(i)) for s, i in pairs] for d, pairs in transfers_np.items()} or None
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.config.amp):
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
        if self.world_size > 1:  # report the mean over processes (NCCL needs the tensor on the GPU)
            reported = reported.to(self.device)
            torch.distributed.all_reduce(reported)
            reported = reported.cpu() / self.world_size
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
            # wall clocks differ between processes: the main process decides for all
            flag = torch.tensor([1 if reason == "max_minutes" else 0], device=self.device)
            torch.distributed.broadcast(flag, 0)
            if flag.item() and not reason:
                reason = "max_minutes"
            elif not flag.item() and reason == "max_minutes":
                reason = ""
        return reason

    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg, state = self.config, self.state
        if self.is_main:
            self._write_config()
        if state.finished:
            if self.is_main:
                print(f"omkit train: {self.run_dir} has finished training; nothing to resume", flush=True)
            return self.run_dir
        session_start, base_elapsed = time.perf_counter(), state.elapsed_s
        window_start = time.perf_counter()
        stop = ""
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
                for step, batches in iterate_steps(self.patches, state.epoch, stage.tasks, state.step, cfg.workers):
                    values, own = self._step(batches, stage.tasks)
                    state.step = step + 1
                    state.global_step += 1
                    state.patches += own
                    state.elapsed_s = base_elapsed + (time.perf_counter() - session_start)
                    state.add_losses(values, own)
                    if state.window_count >= cfg.log_every or state.step == steps:
                        now = time.perf_counter()
                        row = self._metrics_row(now - window_start)
                        state.rows.append(row)
                        bar.set_postfix_str(self._postfix(row), refresh=False)
                        window_start = now
                    bar.update(1)
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
                self._snapshot(self.run_dir / "checkpoints" / f"stage{state.stage + 1}.pt")
                state.stage += 1
                state.stage_epoch = 0
                if state.stage < len(self.stages):
                    state.stage_starts.append(state.global_step)
        state.finished = state.stage >= len(self.stages)
        state.stopped_by = stop or "finished"
        self._save_checkpoint()
        extra = self._consistency_report()
        self._snapshot(self.run_dir / "model.pt")
        self._write_reports(extra)
        if self.is_main and cfg.progress:
            print(
                f"omkit train: {state.stopped_by} after {state.global_step} steps ({state.epoch} epochs, "
                f"{state.patches / max(state.elapsed_s, 1e-9):.1f} patches/s); model: {self.run_dir / 'model.pt'}",
                flush=True,
            )
        return self.run_dir

    def _total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def _metrics_row(self, seconds: float) -> dict:
        state = self.state
        mean, patches = state.take_window()
        return {
            "step": state.global_step,
            "epoch": round(state.epoch + state.step / max(1, self.patches.steps_per_epoch(self.stages[state.stage].tasks)), 4),
            "stage": state.stage + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss_task1": mean[0], "loss_task2": mean[1], "loss_task3": mean[2], "loss_total": mean[3],
            "patches": state.patches,
            "patches_per_s": round(patches / seconds, 3) if seconds > 0 else None,
            "elapsed_s": round(state.elapsed_s, 3),
        }

    @staticmethod
    def _postfix(row) -> str:
        losses = " ".join(f"t{t + 1}={row[f'loss_task{t + 1}']:.3f}" for t in range(3) if not math.isnan(row[f"loss_task{t + 1}"]))
        rate = f"{row['patches_per_s']:.1f}" if row["patches_per_s"] else "-"
        return f"loss {losses} | {rate} patches/s"

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
        if self._plateaued(stage):
            state.stage_epoch = stage.epochs  # the stage is done

    def _plateaued(self, stage: Stage) -> bool:
        """Optional plateau rule: end a non-final stage early when its newest
        task's epoch loss improved by less than ``plateau_tol`` (relative)."""
        tol, state = self.config.plateau_tol, self.state
        if tol is None or state.stage == len(self.stages) - 1 or state.stage_epoch < 2:
            return False
        key = f"loss_task{max(stage.tasks) + 1}"
        prev, cur = state.epoch_rows[-2][key], state.epoch_rows[-1][key]
        if not (prev > 0):
            return False
        return (prev - cur) / prev < tol

    def _sync_buffers(self) -> None:
        """DDP copies rank 0's buffers (BatchNorm running statistics) to every
        process at the start of each forward, so after the last step they
        differ by one local update; copy them once more so that every process
        ends with the model rank 0 saves."""
        if self.world_size > 1:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def _consistency_report(self) -> dict:
        """Per-process digests of the final weights (identical under DDP) and of
        each process's first patch pool (different: each samples its own)."""
        self._sync_buffers()
        params = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in self.model.parameters())).hexdigest()
        digest = weights_digest(self.model)
        pool = self.patches.pool(0, self.stages[0].tasks[0])
        patch_digest = hashlib.sha256(np.ascontiguousarray(pool).tobytes()).hexdigest()[:16]
        local = {"weights_sha256": digest, "parameters_sha256": params, "patch_pool_sha256": patch_digest}
        if self.world_size > 1:
            gathered = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        return {"processes": gathered, "weights_identical": len({g["weights_sha256"] for g in gathered}) == 1}

    def close(self) -> None:
        if self._owns_process_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


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

