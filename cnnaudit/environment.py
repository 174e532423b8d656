"""The machine an audit runs on: device choice, and the environment recorded in reports and baselines.

torch is imported inside the functions, so importing this module (and the pytest plugin) stays cheap.
"""

from __future__ import annotations

import platform
import re
from typing import Any

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_option(spec: str) -> str:
    """Return ``spec`` if it is one of ``auto|cpu|cuda|cuda:N``; raise ``ValueError`` otherwise."""
    if not _DEVICE_PATTERN.fullmatch(spec):
        raise ValueError(f"--cnnaudit-device={spec!r} is not a device; use {DEVICE_CHOICES}")
    return spec


def worker_index(worker_id: str | None) -> int:
    """The xdist worker number (``"gw3"`` -> 3); 0 outside xdist (``None`` or ``"master"``)."""
    match = re.fullmatch(r"gw(\d+)", worker_id or "")
    return int(match.group(1)) if match else 0


def resolve_device(spec: str, *, worker: int, cuda_available: bool, device_count: int) -> str:
    """The device string for ``spec`` on xdist worker ``worker``.

    ``auto`` is ``cuda`` when CUDA is available, else ``cpu``. ``cuda`` (also via ``auto``) spreads
    workers over the GPUs: ``cuda:(worker % device_count)``. ``cuda:N`` is used as given.
    """
    check_device_option(spec)
    if spec == "cpu" or (spec == "auto" and not cuda_available):
        return "cpu"
    if not cuda_available or device_count == 0:
        raise ValueError(
            f"--cnnaudit-device={spec} but CUDA is not available to torch here; "
            "use --cnnaudit-device=auto (GPU when there is one) or --cnnaudit-device=cpu"
        )
    if spec.startswith("cuda:"):
        index = int(spec.split(":")[1])
        if index >= device_count:
            raise ValueError(
                f"--cnnaudit-device={spec} but torch sees {device_count} GPU(s) (cuda:0..cuda:{device_count - 1})"
            )
        return spec
    return f"cuda:{worker % device_count}"


def torch_device(spec: str, worker_id: str | None) -> Any:
    """``torch.device`` for ``spec`` on this process (see :func:`resolve_device`)."""
    import torch

    return torch.device(
        resolve_device(
            spec,
            worker=worker_index(worker_id),
            cuda_available=torch.cuda.is_available(),
            device_count=torch.cuda.device_count(),
        )
    )


def describe() -> dict[str, Any]:
    """Versions and accelerators of this process: python, platform, torch, CUDA, GPUs, cnnaudit."""
    import torch

    import cnnaudit

    available = torch.cuda.is_available()
    return {
        "cnnaudit": cnnaudit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cuda_available": available,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else [],
    }


def header_line(env: dict[str, Any], device: str) -> str:
    """One line for pytest's header: torch, CUDA, GPUs and the device audits will use."""
    gpus = env["gpus"]
    gpu_text = f"{len(gpus)} x {gpus[0]}" if gpus and len(set(gpus)) == 1 else (", ".join(gpus) or "none")
    cuda = env["cuda"] or "none"
    if env["cuda"] and not env["cuda_available"]:
        cuda += " (not available)"
    return f"cnnaudit {env['cnnaudit']}: torch {env['torch']}, CUDA {cuda}, GPU {gpu_text}, device {device}"


def device_identity(device: Any) -> dict[str, Any]:
    """What a baseline compares across runs: torch version, device type and GPU model (not its index)."""
    import torch

    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"torch": str(torch.__version__), "device": device.type, "gpu": gpu}
