"""Resolving a ``--device`` setting (the one rule for every command and the
Python API): ``auto`` is CUDA when available, else the CPU; under torchrun
(``LOCAL_RANK`` set) a bare ``cuda`` means this process's own GPU."""
from __future__ import annotations

import os

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(name: str = "auto", local_rank: int | None = None):
    """The ``torch.device`` that ``name`` means on this machine; a one-line
    ``ValueError`` naming ``--device`` when it is malformed or unavailable."""
    import torch

    name = str(name).strip().lower()
    if local_rank is None and os.environ.get("LOCAL_RANK") is not None:
        local_rank = int(os.environ["LOCAL_RANK"])
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"  # one GPU per torchrun process
        return torch.device(name)
    raise ValueError(f"--device must be {DEVICE_CHOICES}, got {name!r}")


def is_valid_device_name(name: str) -> bool:
    """Whether ``name`` is spelled as a device setting (without checking the machine)."""
    name = str(name).strip().lower()
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
