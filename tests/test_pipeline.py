"""The batch pipeline: no per-batch host reads, value checks on the device, constant memory over large sets."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import cnnaudit as ca
from cnnaudit.images import as_batch, check_value_range, value_range

# Every way a value travels from a tensor to the host (on a GPU each one is a synchronisation):
# scalar reads in C++ (item, bool, int, indexing with a 0-d tensor) reach the dispatcher as
# _local_scalar_dense; whole-tensor reads are Python-level torch functions.
_TENSOR_READS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}


class _ScalarReads(TorchDispatchMode):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.calls.append("scalar")
        return func(*args, **(kwargs or {}))


class _TensorReads(TorchFunctionMode):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _TENSOR_READS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_reads() -> Iterator[list[str]]:
    """The host reads made inside the block, in order (visible on the CPU too)."""
    calls: list[str] = []
    with _TensorReads(calls), _ScalarReads(calls):
        yield calls


@pytest.mark.parametrize(
    "explain",
    [
        lambda s, x, t: s.gradcam(x, target=t),
        lambda s, x, t: s.gradcam(x, target=t, method="gradcam++"),
        lambda s, x, t: s.gradcam(x, target=t, method="scorecam"),
        lambda s, x, t: s.saliency(x, target=t),
    ],
    ids=["gradcam", "gradcam++", "scorecam", "guided_backprop"],
)
@pytest.mark.parametrize("target", [None, 2, [1, 3] * 6], ids=["predicted", "class", "per-image"])
def test_host_reads_per_call_do_not_grow_with_batches(tiny_cnn, explain, target) -> None:
    x = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    counts = {}
    for batch_size in (12, 2):  # one batch, six batches
        subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=batch_size, cache=False)
        with host_reads() as calls:
            explain(subject, x, target)
        counts[batch_size] = calls
    # per call: the value range (tolist), the explained and predicted classes together, Heatmaps' zero flags (cpu)
    assert counts[2] == counts[12] and len(counts[12]) <= 3, counts


@pytest.mark.parametrize("metric", ["mass_in", "enrichment", "pointing_game", "rank_accuracy"])
def test_attention_metrics_read_their_values_back_once(metric) -> None:
    """150 maps are 3 chunks of 64: the values are collected on the device and read back once."""
    from cnnaudit import metrics
    from cnnaudit.heatmaps import Heatmaps
    from cnnaudit.regions import Regions

    counts = {}
    for n in (10, 150):
        heatmaps = Heatmaps(torch.rand(n, 4, 4, generator=torch.Generator().manual_seed(0)), image_size=(8, 8), method="m")
        regions = Regions([(0, 0, 4, 4)] * n, image_size=(8, 8))
        with host_reads() as calls:
            getattr(metrics, metric)(heatmaps, regions)
        counts[n] = calls
    assert counts[150] == counts[10] == ["cpu", "numpy"], counts  # one transfer: .cpu().numpy()


def test_value_check_runs_on_the_device_and_reports_the_range_of_all_batches(tiny_cnn) -> None:
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[1, 0, 0, 0], x[4, 2, 3, 3] = -0.5, 1.5  # in different batches of 2
    subject = ca.Subject(tiny_cnn, layer="features.2", device="cpu", batch_size=2)
    with pytest.raises(ValueError, match=r"in \[0,1\], got range \[-0.5, 1.5\]"):
        subject.gradcam(x)
    x[1, 0, 0, 0], x[4, 2, 3, 3] = 0.5, float("nan")
    with pytest.raises(ValueError, match="finite and in"):
        subject.gradcam(x)
    assert subject.cache.stats.entries == 0  # a failed request is not cached


def test_value_range_helpers() -> None:
    ranges = torch.stack([value_range(torch.tensor([0.25, 0.5])), value_range(torch.tensor([0.0, 0.75]))])
    assert ranges.tolist() == [[0.25, 0.5], [0.0, 0.75]]
    check_value_range(ranges)
    with pytest.raises(ValueError, match=r"got range \[-1, 0.75\]"):
        check_value_range(torch.cat([ranges, torch.tensor([[-1.0, 0.5]])]))
    image = torch.zeros(1, 3, 2, 2)
    image[0, 1, 1, 0] = 2.0
    with pytest.raises(ValueError, match=r"got range \[0, 2\]"):
        as_batch(image)
    assert as_batch(image, check_range=False) is not None  # the caller checks instead


def test_as_batch_keeps_tensors_on_their_device() -> None:
    # the meta device stands in for a GPU: a copy to the host would fail ("cannot copy out of meta")
    floats = torch.empty(2, 3, 4, 4, device="meta")
    assert as_batch(floats, keep_device=True, check_range=False).device.type == "meta"
    pixels = torch.empty(2, 4, 4, 3, dtype=torch.uint8, device="meta")
    converted = as_batch(pixels, keep_device=True)
    assert converted.device.type == "meta" and converted.shape == (2, 3, 4, 4) and converted.dtype == torch.float32
    with pytest.raises(NotImplementedError):
        as_batch(floats)  # the default still hands back a CPU tensor


_STREAM = """
import json, resource, sys
import torch
from torch import nn
import cnnaudit as ca

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
subject = ca.Subject(model, layer="2", device="cpu", batch_size=64)

def peak_mb():
    # Linux: this process image's peak (ru_maxrss would start at the forking parent's, kept across exec)
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**10
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)

def loader(i):
    return lambda: torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))

def image_set(n):
    return ca.ImageSet([loader(i) for i in range(n)], regions={"box": [(8, 8, 24, 24)] * n})

def audit(n):
    images = image_set(n)
    return subject.gradcam(images).mass_in(images.region("box")).n_defined

n = int(sys.argv[1])
audit(128)  # warm-up: threads, allocator, lazy imports
result = {"defined": [audit(n)], "peak_n": peak_mb()}
result["defined"].append(audit(4 * n))
result["peak_4n"] = peak_mb()
everything = image_set(4 * n).tensor()  # positive control: what holding the 4n images costs
result["peak_control"] = peak_mb()
print(json.dumps(result))
"""


def test_large_image_sets_stream_in_constant_memory() -> None:
    """2,000 then 8,000 lazily loaded 32 px images through gradcam + mass_in, in a fresh process
    (peak RSS: ``VmHWM``, or ``ru_maxrss`` off Linux; tracemalloc cannot see torch's allocations).

    The peak RSS may grow with N only by per-image bookkeeping (ids, loaders, regions: ~1-2 KB
    each), far less than one image (12 KB): images and full-size maps are never all in memory.
    """
    n, image_mb = 2000, 3 * 32 * 32 * 4 / 2**20
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(_STREAM), str(n)], capture_output=True, text=True, cwd=root,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["defined"] == [n, 4 * n]  # every map and box gave a value
    growth = result["peak_4n"] - result["peak_n"]
    control = result["peak_control"] - result["peak_4n"]
    assert growth < 0.5 * image_mb * 3 * n, result  # < half an image per extra image
    assert control > image_mb * 4 * n, result  # the measurement does see 4n images held at once
