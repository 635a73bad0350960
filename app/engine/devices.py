"""What this machine offers the engine: its devices and how much of their memory is in use.

Plain values only, so the app can show them without touching torch.
"""

from __future__ import annotations

import psutil
import torch


def list_devices() -> list[dict]:
    """[{"id": "cpu" | "cuda:N", "name": ..., "memory_bytes": total}] with the CPU last."""
    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"id": f"cuda:{index}", "name": props.name, "memory_bytes": props.total_memory})
    devices.append({"id": "cpu", "name": "CPU", "memory_bytes": psutil.virtual_memory().total})
    return devices


def memory_in_use(device: str) -> dict:
    """{"device", "used_bytes", "total_bytes"} for a GPU (the whole card, as nvidia-smi counts)
    or for the CPU (the system's RAM)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return {"device": device, "used_bytes": total - free, "total_bytes": total}
    ram = psutil.virtual_memory()
    return {"device": "cpu", "used_bytes": ram.total - ram.available, "total_bytes": ram.total}
