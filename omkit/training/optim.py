"""The model, optimiser, learning-rate schedule, AMP scaler and random seeds of
a run (Sec. IV-C: the paper's Caffe solver is SGD with momentum and weight
decay, the learning rate multiplied by ``lr_gamma`` every ``lr_step_epochs``)."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from omkit.data.features import DEFAULT_INPUT_FEATURES, input_channels

from .config import TrainConfig, flag


def _fixed_model_kw(config: TrainConfig) -> dict:
    """The model's keyword arguments that have options of their own."""
    kw = {}
    if config.input_features != DEFAULT_INPUT_FEATURES:
        kw["in_channels"] = input_channels(config.input_features)
    if config.attention is not None:
        kw["attention"] = config.attention
    return kw


def check_model_settings(config: TrainConfig) -> None:
    """An unknown ``--attention``, or a ``--model-options`` value the model cannot be
    built with, is a one-line error before any data is prepared (the model is built
    on the meta device: :func:`omkit.models.options.check_model_options`)."""
    from omkit.factory import list_attention
    from omkit.models.options import check_model_options

    if config.attention is not None and config.attention not in list_attention():
        raise ValueError(f"{flag('attention')}: unknown attention {config.attention!r}; "
                         f"available: {', '.join(list_attention()) or '(none)'}")
    check_model_options(config.preset, config.width, config.model_options, _fixed_model_kw(config),
                        flag=flag("model_options"))


def build_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """``create_model(preset, width=..., attention=..., **model_options)`` with
    the weights of ``config.seed`` (identical on every process)."""
    from omkit.models.build import create_model

    kw = {**config.model_options, **_fixed_model_kw(config)}
    torch.manual_seed(config.seed)
    try:
        model = create_model(config.preset, width=config.width, **kw)
    except (TypeError, ValueError, KeyError) as exc:  # an option the model does not take
        given = [f"{flag('preset')} {config.preset}"]
        if config.attention is not None:
            given.append(f"{flag('attention')} {config.attention}")
        if config.input_features != DEFAULT_INPUT_FEATURES:
            given.append(f"{flag('input_features')} {config.input_features}")
        if config.model_options:
            given.append(f"{flag('model_options')} " + " ".join(f"{k}={v!r}" for k, v in config.model_options.items()))
        raise ValueError(f"{' '.join(given)}: {' '.join(str(exc).split())}") from None
    if config.train_mode == "windows":
        from .windows import check_model

        try:
            check_model(model)
        except ValueError as exc:
            raise ValueError(f"{flag('train_mode')} windows: {exc}") from None
    return model.to(device)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":  # the paper's (Caffe) solver
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    # converges in far fewer steps: for budgets of minutes, not epochs
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    """Stepped once per epoch."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma)


def build_scaler(config: TrainConfig):
    """The gradient scaler of float16 mixed precision (CUDA only); disabled otherwise
    (bfloat16 has float32's range and needs none)."""
    return torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")


def seed_process(seed: int, rank: int) -> None:
    """Each process its own dropout stream (and numpy / Python streams, for plug-ins)."""
    value = seed * 1_000_003 + rank + 1
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)
