"""The device every command runs on: one resolver, shared by ``train``, ``capture``, ``icl_eval``,
``alignment``, ``phenomena`` and the LLM branches (torch is imported only when called).
"""

from __future__ import annotations


def resolve_device(device: str = "auto") -> str:
    """The one device resolver of every command: ``auto`` -> ``cuda`` when a GPU is visible,
    else ``cpu``; ``cuda`` under torchrun -> this rank's GPU (``cuda:$LOCAL_RANK``); ``cpu``,
    ``cuda:N`` and ``mps`` are checked against what is there.  One-line ValueErrors."""
    import os

    import torch

    device = str(device).strip().lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist; {torch.cuda.device_count()} GPU(s) visible")
    return str(dev)


def torch_device(device: str = "auto"):
    """:func:`resolve_device` as a ``torch.device``."""
    import torch

    return torch.device(resolve_device(device))
