"""The one ReLU function mode shared by guided backprop / deconvnet and the redirected gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnaudit.attribution.guided import RectifierRule
from cnnaudit.maximize.redirect import redirected_relus
from cnnaudit.relu_mode import ReLUMode

SPELLINGS = {
    "nn.ReLU()": lambda h: nn.ReLU()(h),
    "nn.ReLU(inplace=True)": lambda h: nn.ReLU(inplace=True)(h),
    "F.relu": lambda h: F.relu(h),
    "F.relu(inplace=True)": lambda h: F.relu(h, inplace=True),
    "F.relu(h, True)": lambda h: F.relu(h, True),  # in place, given by position
    "F.relu_": lambda h: F.relu_(h),
    "torch.relu": lambda h: torch.relu(h),
    "torch.relu_": lambda h: torch.relu_(h),
    "Tensor.relu": lambda h: h.relu(),
    "Tensor.relu_": lambda h: h.relu_(),
}
IN_PLACE = {"nn.ReLU(inplace=True)", "F.relu(inplace=True)", "F.relu(h, True)", "F.relu_", "torch.relu_", "Tensor.relu_"}


@pytest.mark.parametrize("mode", [lambda: RectifierRule("guided"), lambda: RectifierRule("deconvnet"), redirected_relus],
                         ids=["guided", "deconvnet", "redirected"])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_of_relu_is_replaced_with_its_forward_and_in_place_semantics(mode, spelling) -> None:
    x = torch.tensor([[-1.0, 2.0, -3.0, 4.0]], requires_grad=True)
    h = x * 1.0  # a non-leaf, so in-place calls are allowed
    active = mode()
    with active:
        y = SPELLINGS[spelling](h)
    assert active.relu_calls == 1
    assert torch.equal(y, torch.tensor([[0.0, 2.0, 0.0, 4.0]]))
    if spelling in IN_PLACE:  # the input itself is rectified, as the original call does
        assert torch.equal(h.detach(), torch.tensor([[0.0, 2.0, 0.0, 4.0]]))
    else:
        assert torch.equal(h.detach(), torch.tensor([[-1.0, 2.0, -3.0, 4.0]]))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad[0, 1] == grad[0, 3] == 1.0  # every rule passes a positive gradient where the ReLU is on


def test_other_calls_pass_through_unless_a_mode_refuses_them() -> None:
    with ReLUMode(lambda x: x.clamp(min=0)) as mode:
        assert torch.equal(torch.sigmoid(torch.zeros(1)), torch.full((1,), 0.5))
    assert mode.relu_calls == 0
    with pytest.raises(ValueError, match="the model applies silu"), RectifierRule("guided"):
        F.silu(torch.zeros(1))
