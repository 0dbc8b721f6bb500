"""Model shapes for every method, head locality of late fusion, registry errors, local weights."""
from __future__ import annotations

import pytest
import torch

from wbc_edge.errors import SpecError
from wbc_edge.spec import spec_for
from wbc_edge.train.models import BACKBONES, create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method,lights,heads", [
    ("single", ("color2",), 1), ("early", None, 1), ("late", None, 4), ("mimo", None, 4)])
def test_every_method_returns_head_logits(method, lights, heads):
    spec = spec_for(method, lights, backbone="shufflenet_v2_x0_5", input_size=32) if lights else \
        spec_for(method, backbone="shufflenet_v2_x0_5", input_size=32)
    model = create_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(spec.input_shape(3)))
    assert out.shape == (3, heads, 5)
    assert spec.num_heads == heads


def test_resnet_mimo_shape():
    spec = spec_for("mimo", backbone="resnet18", input_size=32)
    with torch.no_grad():
        assert create_model(spec).eval()(torch.randn(2, 12, 32, 32)).shape == (2, 4, 5)


def test_late_fusion_head_reads_only_its_light():
    spec = spec_for("late", backbone="shufflenet_v2_x0_5", input_size=32)
    model = create_model(spec).eval()
    x = torch.randn(2, 12, 32, 32)
    y = x.clone()
    y[:, 3:] = torch.randn(2, 9, 32, 32)  # change every light except the first
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1:], b[:, 1:])


def test_unknown_backbone_lists_the_valid_names():
    spec = spec_for("mimo", backbone="vgg11", input_size=32)
    with pytest.raises(SpecError) as e:
        create_model(spec)
    assert all(name in str(e.value) for name in BACKBONES)


def test_local_weights_adapt_the_first_conv(tmp_path):
    source = BACKBONES["shufflenet_v2_x0_5"](weights=None)
    path = tmp_path / "imagenet.pth"
    torch.save(source.state_dict(), path)
    model = create_model(spec_for("early", backbone="shufflenet_v2_x0_5", input_size=32), pretrained_weights=str(path))
    rgb = source.conv1[0].weight
    w = model.net.conv1[0].weight
    assert w.shape[1] == 12
    for light in range(4):
        assert torch.allclose(w[:, 3 * light : 3 * light + 3], rgb / 4)
    assert torch.equal(model.net.stage2[0].branch1[0].weight, source.stage2[0].branch1[0].weight)


def test_bad_weights_file_is_one_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SpecError, match="broken.pth"):
        create_model(spec_for("mimo", backbone="shufflenet_v2_x0_5", input_size=32), pretrained_weights=str(path))
