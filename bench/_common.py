"""What both benchmarks record about the machine they ran on, and what they share about devices."""
from __future__ import annotations

import os
import platform


def machine_info(device: str = "cpu") -> dict[str, object]:
    import optuna
    import torch

    info: dict[str, object] = {"cpus": os.cpu_count(), "load_average_end": os.getloadavg(),
                               "python": platform.python_version(), "torch": torch.__version__,
                               "optuna": optuna.__version__, "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(torch.device(device)), cuda=torch.version.cuda)
    return info


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work (CUDA runs ahead)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))
