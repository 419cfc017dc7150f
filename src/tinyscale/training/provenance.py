"""What a run was trained with, for run.json: the code's commit and the machine."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from tinyscale import git_commit  # noqa: F401 - the trainer imports it from here
from tinyscale.model import bf16_native


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the run's speed figures were measured on: CPU model, cores, and the GPU if one is used."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:  # not Linux
        cpu = None
    info = {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "bf16_native": bf16_native(device), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
