"""What both benchmarks record about the machine they ran on."""
from __future__ import annotations

import os
import platform


def machine_info() -> dict[str, object]:
    import optuna
    import torch

    return {"cpus": os.cpu_count(), "load_average_end": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "optuna": optuna.__version__, "torch_threads": torch.get_num_threads()}
