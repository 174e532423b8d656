"""The CUDA paths, run by ``benchmarks/gpu_check.sh`` on a machine with a GPU (``pytest -m gpu``).

Deselected by default (``-m 'not slow and not gpu'`` in pyproject's addopts). Selected on a machine
without CUDA they fail, they do not skip: the check exists to run them.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import cnnaudit as ca
from cnnaudit.environment import torch_device

pytestmark = pytest.mark.gpu


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()


def images(n: int, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_cuda_is_there() -> None:
    assert torch.cuda.is_available(), "the GPU check runs on a machine with CUDA"


def test_maps_are_computed_on_the_gpu_and_equal_the_cpus() -> None:
    model = small_cnn()
    x = images(8)
    on_gpu = ca.Subject(model, layer="3", device="cuda", cache=False).gradcam(x, target=1)
    on_cpu = ca.Subject(model, layer="3", device="cpu", cache=False).gradcam(x, target=1)
    assert on_gpu.raw.device.type == "cuda" and next(model.parameters()).device.type == "cpu"  # the model is put back
    torch.testing.assert_close(on_gpu.raw.cpu(), on_cpu.raw, rtol=1e-4, atol=1e-5)
    mass = on_gpu.mass_in([(16, 16, 48, 48)] * 8)
    assert abs(mass.mean() - on_cpu.mass_in([(16, 16, 48, 48)] * 8).mean()) < 1e-4


def test_each_xdist_worker_takes_its_own_gpu() -> None:
    count = torch.cuda.device_count()
    for worker in range(4):
        device = torch_device("auto", f"gw{worker}")
        assert device == torch.device(f"cuda:{worker % count}")
        assert torch.ones(1, device=device).device == device


def test_out_of_memory_halves_the_batch_and_gives_the_same_maps(caplog: pytest.LogCaptureFixture) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    x = images(64, 224)
    reference = ca.Subject(model, layer="layer4", device="cuda", cache=False, batch_size=8).gradcam(x, target=0).raw.cpu()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = (torch.cuda.memory_allocated(0) + 1.5 * 2**30) / total  # room for about 1.5 GB: 64 images at once do not fit
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    try:
        with caplog.at_level("WARNING", logger="cnnaudit"):
            capped = ca.Subject(model, layer="layer4", device="cuda", cache=False, batch_size=64).gradcam(x, target=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert "CUDA out of memory with 64 images per pass; retrying with 32" in caplog.text
    torch.testing.assert_close(capped.raw.cpu(), reference, rtol=1e-4, atol=1e-5)


def test_no_host_sync_per_batch() -> None:
    """The number of synchronising calls does not grow with the number of batches."""
    model = small_cnn()
    x = images(64)

    def syncs(batch_size: int) -> int:
        subject = ca.Subject(model, layer="3", device="cuda", cache=False, batch_size=batch_size)
        subject.gradcam(x[:8], target=1)  # warm-up: first-call work is not the loop's
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                subject.gradcam(x, target=1).mass_in([(16, 16, 48, 48)] * 64)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in caught)

    assert syncs(4) == syncs(32)  # 16 batches against 2
