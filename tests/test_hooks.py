"""The capture engine: clones against in-place ops, autograd.grad only, hooks always removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnaudit as ca
from cnnaudit import hooks


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def resnet(torchvision_model) -> nn.Module:
    return torchvision_model("resnet18")


def test_recording_survives_inplace_add_and_relu_in_resnet_block(resnet):
    """layer1.0.bn2's output is followed by `out += identity` and an in-place ReLU. The recorded tensor
    must equal bn2's true output (which has negative values), and a naive hook that stores the output
    without a clone is corrupted by the same ops (so this test can fail)."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    block = resnet.layer1[0]
    with torch.no_grad():
        block_input = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        truth = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(block_input)))))
    assert (truth < 0).any()

    naive: list[torch.Tensor] = []
    handle = block.bn2.register_forward_hook(lambda m, i, o: naive.append(o))
    try:
        with torch.no_grad():
            resnet(x)
    finally:
        handle.remove()
    assert not torch.allclose(naive[0], truth)

    with torch.no_grad(), hooks.record({"layer1.0.bn2": block.bn2}) as recording:
        resnet(x)
    torch.testing.assert_close(recording["layer1.0.bn2"], truth)
    assert hook_count(resnet) == 0


def test_gradient_at_inner_layer_matches_leaf_oracle(resnet):
    """d score / d bn2-output through the in-place add and ReLU, vs an oracle that replaces the output
    by a detached leaf (plus a copy for downstream) and differentiates with respect to the leaf."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    bn2 = resnet.layer1[0].bn2
    with hooks.record({"bn2": bn2}) as recording:
        scores = resnet(x)[:, 3]
    (engine,) = hooks.gradient(scores, recording["bn2"])

    leaves: list[torch.Tensor] = []

    def to_leaf(module, inputs, output):
        leaves.append(output.detach().requires_grad_())
        return leaves[-1] * 1.0

    handle = bn2.register_forward_hook(to_leaf)
    try:
        (oracle,) = torch.autograd.grad(resnet(x)[:, 3].sum(), leaves)
    finally:
        handle.remove()
    torch.testing.assert_close(engine, oracle)
    assert all(p.grad is None for p in resnet.parameters())


def test_densenet_features_recorded_before_the_inplace_relu(torchvision_model):
    """torchvision DenseNet applies F.relu(features, inplace=True) after `features`; the recorded
    activation must be norm5's output (with negative values), not the ReLU'd tensor."""
    model = torchvision_model("densenet121")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        truth = model.features(x)
        with hooks.record({"features": model.features}) as recording:
            model(x)
    assert (truth < 0).any()
    torch.testing.assert_close(recording["features"], truth)


def test_start_graph_gives_gradients_with_frozen_parameters_and_plain_input(tiny_cnn, images16):
    for p in tiny_cnn.parameters():
        p.requires_grad_(False)
    with hooks.record({"conv": tiny_cnn.features[2]}, start_graph=True) as recording:
        scores = tiny_cnn(images16)[:, 0]
    A = recording["conv"]
    assert A.is_leaf and A.requires_grad
    (dA,) = hooks.gradient(scores, A)
    # independent check: the head after features[2] is relu -> batch norm (eval) -> mean pool -> linear,
    # so dS/dA_kij = W_0k * gamma_k / sqrt(var_k + eps) * [A_kij > 0] / (h*w)
    h, w = A.shape[-2:]
    bn = tiny_cnn.features[4]
    per_channel = tiny_cnn.fc.weight[0] * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    expected = per_channel[None, :, None, None] * (A > 0) / (h * w)
    torch.testing.assert_close(dA, expected.detach())


def test_hooks_removed_when_the_model_raises(tiny_cnn, images16):
    class Boom(Exception):
        pass

    def explode(module, inputs, output):
        raise Boom

    handle = tiny_cnn.fc.register_forward_hook(explode)
    try:
        with pytest.raises(Boom), hooks.record({"a": tiny_cnn.features[0], "b": tiny_cnn.features[2]}):
            tiny_cnn(images16)
    finally:
        handle.remove()
    assert hook_count(tiny_cnn) == 0


def test_shared_module_non_tensor_output_and_unused_layer_are_clear_errors(resnet, tiny_cnn, images16):
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), hooks.record({"layer1.0.relu": resnet.layer1[0].relu}) as recording:
        resnet(x)
    with pytest.raises(ValueError, match="ran 2 times"):
        recording["layer1.0.relu"]

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    pair = Pair()
    with pytest.raises(TypeError, match="returned tuple, not a tensor"), hooks.record({"pair": pair}):
        pair(x)

    with hooks.record({"fc": tiny_cnn.fc}, start_graph=True) as recording:
        output = tiny_cnn(images16)
    unrelated = images16.sum(dim=(1, 2, 3)).requires_grad_()
    with pytest.raises(ValueError, match="the recorded layer does not feed the model output"):
        hooks.gradient(unrelated * 2, recording["fc"])
    with pytest.raises(ValueError, match="the recorded layer does not feed the model output"):
        hooks.gradient(images16.sum(dim=(1, 2, 3)), recording["fc"])
    with pytest.raises(ValueError, match="not a differentiable function of the model output"):
        hooks.gradient(output.argmax(1).float(), recording["fc"], output=output)
    (g,) = hooks.gradient(output[:, 1], recording["fc"], output=output)
    assert torch.equal(g, torch.eye(5)[1].expand(4, 5))


class SideBranch(nn.Module):
    """conv -> relu -> pool -> fc, plus a ``side`` conv that runs on the input and is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.side = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.side(x)
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "guided_gradcam"])
def test_a_layer_off_the_path_and_a_non_differentiable_callable_get_their_own_messages(images16, method):
    torch.manual_seed(0)
    subject = ca.Subject(SideBranch().eval(), device="cpu", cache=False)

    def explain(layer: str, target) -> None:
        if method == "gradcam":
            subject.gradcam(images16, target=target, layer=layer)
        else:
            subject.saliency(images16, target=target, method=method, layer=layer)

    for target in (1, None, lambda out: out[:, 1]):  # a class target, the predicted class, a good callable
        with pytest.raises(ValueError, match=r"the recorded layer does not feed the model output .*pick a layer on the path"):
            explain("side", target)
    with pytest.raises(ValueError, match=r"not a differentiable function of the model output.*no argmax"):
        explain("relu", lambda out: (out.argmax(1) == 1).float())
    explain("relu", lambda out: out[:, 1])  # the same layer with a differentiable callable works


def test_first_output_stops_the_pass_at_its_layer_and_leaves_no_hook(tiny_cnn, images16):
    calls = []
    last = list(tiny_cnn.modules())[-1]
    handle = last.register_forward_hook(lambda *_: calls.append(None))
    try:
        out = hooks.first_output(tiny_cnn.features[2], lambda: tiny_cnn(images16))
        assert calls == []  # the pass stopped at features.2: the model's last module never ran
        with torch.no_grad():
            assert torch.allclose(out, tiny_cnn.features[:3](images16))
    finally:
        handle.remove()
    assert hook_count(tiny_cnn) == 0
    unused = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="layer 'spare' was not called in the model's forward pass"):
        hooks.first_output(unused, lambda: tiny_cnn(images16), name="layer 'spare'")
    assert hook_count(unused) == 0
    with pytest.raises(RuntimeError, match="boom"):
        hooks.first_output(tiny_cnn.features[2], lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert hook_count(tiny_cnn) == 0
