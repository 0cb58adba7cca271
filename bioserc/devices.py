"""Which torch device to run on: one rule for training, evaluation, classifiers and the bio backends.

"auto" means CUDA when torch sees a GPU, else CPU. Anything else is checked here, so a typo ("gpu", "cuda1") or a GPU
that is not there fails with one clear line instead of deep inside `Module.to`.
"""

from __future__ import annotations

import re


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def resolve_device(device: str = "auto", allow_index: bool = True) -> str:
    """ "auto" -> "cuda" or "cpu"; "cpu", "cuda" and "cuda:N" are returned as given once they are usable here.

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N".
        allow_index: False where a whole process trains on one GPU (the Trainer picks it): "cuda:N" is then refused
            in favour of CUDA_VISIBLE_DEVICES.
    Raises:
        ValueError: any other string, an index where none is allowed, or a CUDA device that torch cannot see.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        choices = "auto, cpu, cuda or cuda:N" if allow_index else "auto, cpu or cuda"
        raise ValueError(f"device {device!r}: use {choices}")
    if ":" in device and not allow_index:
        raise ValueError(f"device {device!r}: use auto, cpu or cuda (pick the GPU with CUDA_VISIBLE_DEVICES)")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ValueError(
                f"device {device!r}: torch sees {count} CUDA GPU(s) (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}); use cpu or auto"
            )
    return device
