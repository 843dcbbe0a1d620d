"""Which torch device a computation runs on (shared by the trainer, the solver and TRAK)."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' was requested but PyTorch sees no CUDA device; install a CUDA build "
            "of torch (see README) or use device='auto'/'cpu'."
        )
    return device
