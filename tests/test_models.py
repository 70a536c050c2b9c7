"""Zoo models: forward at batch 1 and 8, ONNX export (opset 17) matching torch within 1e-4, bad names/widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlprune_edge.errors import UserError
from rlprune_edge.flops import count_flops, count_params
from rlprune_edge.models import ZOO_NAMES, build_model, model_input_shape
from rlprune_edge.onnx_io import export_onnx

# Small widths keep the whole file fast on 2 shared cores; MobileNet rounds to >= 8 channels anyway.
TEST_WIDTH = {"googlenet": 0.0625, "densenet121": 0.125}


def test_zoo_names_are_the_papers_set():
    assert set(ZOO_NAMES) == {"vgg11", "vgg16", "vgg19", "resnet20", "resnet56", "mobilenetv3_small",
                              "mobilenetv3_large", "googlenet", "densenet121"}


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_forward_and_onnx_match(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(name, width=TEST_WIDTH.get(name, 0.125), num_classes=7).eval()
    assert model_input_shape(model) == (3, 32, 32)
    with torch.no_grad():
        for batch in (1, 8):
            out = model(torch.randn(batch, 3, 32, 32))
            assert out.shape == (batch, 7)
            assert torch.isfinite(out).all()
    path = export_onnx(model, tmp_path / f"{name}.onnx", (3, 32, 32), batch=8)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_width_scales_channels_and_macs():
    small, big = build_model("vgg19", 0.25), build_model("vgg19", 0.5)
    assert small.features[0].out_channels == 16 and big.features[0].out_channels == 32
    # conv MACs scale with width^2 (except the 3-channel input layer and the classifier)
    ratio = count_flops(big, (3, 32, 32)) / count_flops(small, (3, 32, 32))
    assert 3.5 < ratio < 4.1
    assert count_params(big) > 3 * count_params(small)


def test_mobilenet_rounds_to_multiples_of_8():
    model = build_model("mobilenetv3_small", width=0.3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 3]
    assert all(m.out_channels % 8 == 0 for m in convs)


def test_known_mac_counts_at_width_1():
    # Published CIFAR figures: ResNet-20 ~41M MACs and 0.27M params; ResNet-56 ~126M MACs.
    assert count_flops(build_model("resnet20"), (3, 32, 32)) == pytest.approx(40.8e6, rel=0.01)
    assert count_params(build_model("resnet20")) == pytest.approx(0.27e6, rel=0.01)
    assert count_flops(build_model("resnet56"), (3, 32, 32)) == pytest.approx(125.7e6, rel=0.01)


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), float("inf")])
def test_bad_width_is_user_error(width):
    with pytest.raises(UserError, match="width"):
        build_model("vgg11", width=width)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="vgg19.*densenet121.*torchvision:NAME"):
        build_model("vgg12")
    with pytest.raises(UserError, match="torchvision model"):
        build_model("torchvision:not_a_model")


def test_torchvision_adapter_random_init():
    model = build_model("torchvision:resnet18", num_classes=5).eval()
    assert model_input_shape(model) == (3, 32, 32)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(UserError, match="width"):
        build_model("torchvision:resnet18", width=0.5)
