"""The machine an audit runs on: device choice, and the environment recorded in reports and baselines.

torch is imported inside the functions, so importing this module (and the pytest plugin) stays cheap.
"""

from __future__ import annotations

import platform
import re
from typing import Any

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
CLI_OPTION = "--cnnaudit-device"


def _setting(option: str, value: str) -> str:
    """How a device setting is written in messages: ``--cnnaudit-device=cuda`` or ``device='cuda'``."""
    return f"{option}={value}" if option.startswith("--") else f"{option}={value!r}"


def check_device_option(spec: Any, option: str = CLI_OPTION) -> str:
    """Return ``spec`` if it is one of ``auto|cpu|cuda|cuda:N``; raise ``ValueError`` otherwise."""
    if not isinstance(spec, str) or not _DEVICE_PATTERN.fullmatch(spec):
        raise ValueError(f"{option}={spec!r} is not a device; use {DEVICE_CHOICES}")
    return spec


def worker_index(worker_id: str | None) -> int:
    """The xdist worker number (``"gw3"`` -> 3); 0 outside xdist (``None`` or ``"master"``)."""
    match = re.fullmatch(r"gw(\d+)", worker_id or "")
    return int(match.group(1)) if match else 0


def device_name(
    spec: str,
    *,
    cuda_available: bool,
    device_count: int,
    worker: int | None = None,
    current: int = 0,
    option: str = CLI_OPTION,
) -> str:
    """The device string for ``spec``: the one resolver behind ``Subject(device=...)`` and ``--cnnaudit-device``.

    ``auto`` is ``cuda`` when CUDA is available, else ``cpu``. ``cuda`` (also via ``auto``) is this
    process' GPU: on xdist worker ``worker`` ``cuda:(worker % device_count)`` (workers spread over
    the GPUs), otherwise the current CUDA device ``current`` (the plugin's ``cnnaudit_device``
    fixture makes a worker's GPU current, so both agree there). ``cuda:N`` is used as given,
    checked against ``device_count``. ``option`` names the setting in error messages.
    """
    check_device_option(spec, option)
    if spec == "cpu" or (spec == "auto" and not cuda_available):
        return "cpu"
    if not cuda_available or device_count == 0:
        raise ValueError(
            f"{_setting(option, spec)} but CUDA is not available to torch here; "
            f"use {_setting(option, 'auto')} (GPU when there is one) or {_setting(option, 'cpu')}"
        )
    if spec.startswith("cuda:"):
        index = int(spec.split(":")[1])
        if index >= device_count:
            raise ValueError(
                f"{_setting(option, spec)} but torch sees {device_count} GPU(s) (cuda:0..cuda:{device_count - 1})"
            )
        return spec
    return f"cuda:{current if worker is None else worker % device_count}"


def torch_device(spec: str, worker_id: str | None = None, *, option: str = CLI_OPTION) -> Any:
    """``torch.device`` for ``spec`` in this process (see :func:`device_name`); ``worker_id`` as xdist names it."""
    import torch

    available = torch.cuda.is_available()
    return torch.device(
        device_name(
            spec,
            cuda_available=available,
            device_count=torch.cuda.device_count() if available else 0,
            worker=None if worker_id is None else worker_index(worker_id),
            # set_device initialises CUDA, so before that the current device is 0 (and this stays cheap)
            current=torch.cuda.current_device() if available and torch.cuda.is_initialized() else 0,
            option=option,
        )
    )


def describe() -> dict[str, Any]:
    """Versions, accelerators and CPU threads of this process: python, platform, torch, CUDA, GPUs, cnnaudit."""
    import torch

    from cnnaudit.version import __version__

    available = torch.cuda.is_available()
    return {
        "cnnaudit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cuda_available": available,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else [],
    }


def header_line(env: dict[str, Any], device: str) -> str:
    """One line for pytest's header: torch, its CPU threads, CUDA, GPUs and the device audits will use."""
    gpus = env["gpus"]
    gpu_text = f"{len(gpus)} x {gpus[0]}" if gpus and len(set(gpus)) == 1 else (", ".join(gpus) or "none")
    cuda = env["cuda"] or "none"
    if env["cuda"] and not env["cuda_available"]:
        cuda += " (not available)"
    return f"cnnaudit {env['cnnaudit']}: torch {env['torch']} ({env['threads']} threads), CUDA {cuda}, GPU {gpu_text}, device {device}"


def device_identity(device: Any) -> dict[str, Any]:
    """What a baseline compares across runs: torch version, device type and GPU model (not its index)."""
    import torch

    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"torch": str(torch.__version__), "device": device.type, "gpu": gpu}
