"""Layer inventory (seed 2's Extractor done right), name resolution and the automatic layer."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

import cnnaudit as ca
from cnnaudit.layers import auto_layer, close_matches, layer_inventory, resolve_layer


def test_resnet50_counts_match_the_extractor_article():
    """The layer-extraction article on ResNet-50 reports "Total CNN Layers: 49, Sequential: 4, Downsampling: 4,
    Linear: 1, Blocks: 16".
    The article's 49 convolutions leave out the 4 in the downsample branches; we count all 53."""
    inventory = layer_inventory(torchvision.models.resnet50(weights=None).eval(), torch.zeros(1, 3, 32, 32))
    assert inventory.counts == {"conv": 49 + 4, "linear": 1, "sequential": 4, "blocks": 16, "downsample": 4}


def test_resnet18_inventory_shapes_channels_and_parameters(torchvision_model):
    model = torchvision_model("resnet18")
    inventory = ca.Subject(model, device="cpu").layers(size=(64, 64))
    assert inventory.counts == {"conv": 20, "linear": 1, "sequential": 4, "blocks": 8, "downsample": 3}
    assert inventory.names() == [name for name, _ in model.named_modules() if name]
    conv1 = inventory["conv1"]
    assert (conv1.type, conv1.parameters, conv1.channels, conv1.output_shape) == ("Conv2d", 64 * 3 * 7 * 7, 64, (64, 32, 32))
    assert inventory["layer4"].output_shape == (512, 2, 2)
    assert inventory["layer2.0.downsample.0"].output_shape == (128, 8, 8)
    assert inventory["fc"].output_shape == (10,) and inventory["fc"].channels == 10
    assert inventory["layer1"].parameters == sum(p.numel() for p in model.layer1.parameters())
    assert inventory["layer1.0.relu"].calls == 2  # BasicBlock applies its ReLU module twice
    text = str(inventory)
    assert text.splitlines()[1].split() == ["name", "type", "parameters", "channels", "output", "shape"]
    assert "layer2.0.downsample.0  Conv2d" in text and "128x8x8" in text
    assert text.splitlines()[-1] == "conv: 20, linear: 1, sequential: 4, blocks: 8, downsample: 3"
    assert len(inventory) == len(text.splitlines()) - 3


def test_the_inventory_says_which_input_size_its_output_shapes_are_for(torchvision_model):
    subject = ca.Subject(torchvision_model("resnet18"), device="cpu")
    inventory = subject.layers(size=(64, 32))
    assert inventory.input_size == (3, 64, 32) and inventory["layer4"].output_shape == (512, 2, 1)
    assert str(inventory).splitlines()[0] == (
        "output shapes for one input of input_size=(3, 64, 32); subject.layers(size=(H, W)) probes another size")
    assert repr(inventory).startswith("LayerInventory(67 layers, input_size=(3, 64, 32), {'conv': 20")
    assert subject.layers().input_size == (3, 224, 224)  # no images seen yet: the 224x224 default


def test_unused_module_has_no_shape():
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.spare = nn.Linear(2, 2)

        def forward(self, x):
            return self.conv(x)

    spare = layer_inventory(WithSpare(), torch.zeros(1, 3, 5, 5))["spare"]
    assert (spare.output_shape, spare.channels, spare.calls, spare.parameters) == (None, None, 0, 6)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet18", "layer4"), ("vgg11", "features"), ("densenet121", "features"), ("mobilenet_v3_small", "features"), ("efficientnet_b0", "features")],
)
def test_auto_layer_for_torchvision_models(torchvision_model, name, expected):
    assert auto_layer(torchvision_model(name), torch.zeros(1, 3, 64, 64)) == expected


class SqueezeExcite(nn.Module):
    """An SE gate built from global pooling and Linear layers: a 2-D output *inside* a block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(self.pool(x).flatten(1)))[:, :, None, None]


def test_auto_layer_skips_pooling_inside_blocks_and_logs_its_choice(caplog):
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3))
    model.add_module("block", nn.Sequential(nn.Conv2d(4, 4, 3), SqueezeExcite(4)))
    model.add_module("last", nn.Conv2d(4, 6, 1))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("head", nn.Linear(6, 2))
    subject = ca.Subject(model, device="cpu")
    with caplog.at_level(logging.INFO, logger="cnnaudit"):
        heatmaps = subject.gradcam(torch.rand(1, 3, 12, 12))
    assert subject.layer == heatmaps.layer == "last"
    assert "layer='auto' picked 'last'" in caplog.text


def test_unknown_layer_lists_close_matches(torchvision_model):
    model = torchvision_model("resnet18")
    with pytest.raises(KeyError, match=r"no layer named 'layer5' in the model \(did you mean 'layer4', 'layer3' or 'layer2'\?\)\. "):
        resolve_layer(model, "layer5")
    with pytest.raises(KeyError, match="'layer1.0.conv1'"):
        ca.Subject(model, layer="layer1.0.cnv1", device="cpu")
    with pytest.raises(KeyError, match="subject.layers()"):
        resolve_layer(model, "")
    assert resolve_layer(model, "layer2.1.bn2") is model.layer2[1].bn2


def test_an_unknown_short_name_suggests_the_full_names_that_end_in_it(torchvision_model):
    model = nn.Sequential()
    model.add_module("features", nn.Sequential())
    model.features.add_module("conv1", nn.Conv2d(3, 4, 3))
    model.features.add_module("conv4", nn.Conv2d(4, 4, 3))
    model.add_module("head", nn.Linear(4, 2))
    with pytest.raises(KeyError, match=r"no layer named 'conv4' in the model \(did you mean 'features\.conv4'\?\)\. "):
        resolve_layer(model, "conv4")
    with pytest.raises(KeyError, match=r"'features\.conv4'"):
        ca.Subject(model, layer="conv4", device="cpu")
    with pytest.raises(KeyError, match=r"\(did you mean 'features\.conv1'\?\)"):
        layer_inventory(model[:1], torch.zeros(1, 3, 8, 8))["conv1"]
    resnet = torchvision_model("resnet18")
    with pytest.raises(KeyError, match=r"\(did you mean 'layer1\.0\.conv1', 'layer2\.0\.conv1', 'layer3\.0\.conv1', "
                                       r"'layer4\.0\.conv1' or 'conv1'\?\)"):
        resolve_layer(resnet, "0.conv1")
    # eight blocks end in '.conv2': six are named, the count says there are more, a close match follows
    with pytest.raises(KeyError, match=r"'layer3\.1\.conv2' or 'conv1'\?\) \(the first 6 of 8 layers ending in '\.conv2'\)\. Layer names"):
        resolve_layer(resnet, "conv2")


def test_close_matches_is_the_one_suggestion_format():
    """Layers, class names, regions and groups all suggest through this helper."""
    assert close_matches("layer5", ["layer4", "fc"]) == " (did you mean 'layer4'?)"
    assert close_matches("cat", ["cats", "cap", "bat", "dog"]) == " (did you mean 'cats', 'cap' or 'bat'?)"
    assert close_matches("dgo", ["dog", "cat"]) == " (did you mean 'dog'?)"
    assert close_matches("zebra", ["dog", "cat"]) == ""
    assert close_matches("x", []) == ""


def test_layer_may_be_given_as_a_module(tiny_cnn, images16):
    subject = ca.Subject(tiny_cnn, layer=tiny_cnn.features[2], device="cpu")
    assert subject.layer == "features.2"
    assert subject.gradcam(images16, layer=tiny_cnn.features[0]).layer == "features.0"


def test_auto_never_picks_a_layer_after_global_pooling_and_a_1x1_map_is_refused():
    """SqueezeNet's classifier (dropout, 1x1 conv, ReLU, global pooling) outputs (N, classes, 1, 1): it was
    picked, and every map was constant (mass_in of a 1/16 box = 0.0625). The head now starts at the
    classifier, so auto is the backbone's `features`; AlexNet at 64 px, whose `features` end in a pooling
    to 1x1, gets the last spatial layer inside them."""
    import cnnaudit as ca

    squeezenet = torchvision.models.squeezenet1_1(weights=None, num_classes=10).eval()
    assert auto_layer(squeezenet, torch.zeros(1, 3, 64, 64)) == "features"
    alexnet = torchvision.models.alexnet(weights=None, num_classes=10).eval()
    assert auto_layer(alexnet, torch.zeros(1, 3, 64, 64)) == "features.11"
    assert auto_layer(alexnet, torch.zeros(1, 3, 224, 224)) == "features"
    subject = ca.Subject(squeezenet, device="cpu", cache=False)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert subject.gradcam(images, target=0).layer == "features"
    with pytest.raises(ValueError, match=r"layer 'classifier' outputs a 1x1 map per channel .* every heatmap would be constant"):
        subject.gradcam(images, target=0, layer="classifier")


def test_inventory_and_auto_layer_reuse_a_probe_the_caller_ran(tiny_cnn):
    from cnnaudit import layers

    x = torch.rand(1, 3, 16, 16)
    events = layers.probe(tiny_cnn, x)
    assert str(layers.layer_inventory(tiny_cnn, x, events)) == str(layers.layer_inventory(tiny_cnn, x))
    assert layers.auto_layer(tiny_cnn, x, events) == layers.auto_layer(tiny_cnn, x) == "features"
