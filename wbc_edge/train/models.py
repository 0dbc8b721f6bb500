"""Every network of the paper's Table 1, built from a torchvision backbone and a ModelSpec.

Only the first convolution (3 * lights input channels) and the classifier (heads * classes outputs)
of torchvision's model are replaced, so parameter and MAC counts match the paper's Table 1 exactly.
Every model takes normalised float [B, 3M, S, S] and returns logits [B, n_heads, n_classes].
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torchvision
from torch import nn

from wbc_edge.errors import SpecError
from wbc_edge.spec import ModelSpec

log = logging.getLogger(__name__)

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "shufflenet_v2_x1_0": torchvision.models.shufflenet_v2_x1_0,
    "shufflenet_v2_x0_5": torchvision.models.shufflenet_v2_x0_5,
    "resnet34": torchvision.models.resnet34,
    "resnet18": torchvision.models.resnet18,
}


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise SpecError(f"backbone '{name}': unknown, choose one of {sorted(BACKBONES)}")


def _first_conv_owner(net: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute) holding the stem convolution for the registered families."""
    if isinstance(net, torchvision.models.ShuffleNetV2):
        return net.conv1, "0"
    return net, "conv1"


def _adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    owner, attr = _first_conv_owner(net)
    old: nn.Conv2d = getattr(owner, attr)
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, bias=old.bias is not None)
    with torch.no_grad():
        # Repeat the RGB filters once per light and divide by the number of lights, so a cell whose
        # lights look alike produces the activations the 3-channel weights were trained for.
        repeats = -(-in_channels // old.in_channels)
        weight = old.weight.repeat(1, repeats, 1, 1)[:, :in_channels]
        new.weight.copy_(weight * (old.in_channels / in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    setattr(owner, attr, new)


def _load_backbone_weights(net: nn.Module, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SpecError(f"{path}: pretrained weights file not found") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad user file
        raise SpecError(f"{path}: not a weights-only state_dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # The classifier never matches (5 classes, several heads): keep ours.
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise SpecError(f"{path}: weights do not fit the backbone (missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.info("loaded backbone weights from %s", path)


class BackboneNet(nn.Module):
    """One torchvision network: `in_channels` in, `n_heads * n_classes` logits out as [B, H, K]."""

    def __init__(self, backbone: str, in_channels: int, n_heads: int, n_classes: int,
                 pretrained_weights: str | None = None) -> None:
        super().__init__()
        check_backbone(backbone)
        net = BACKBONES[backbone](weights=None)
        if pretrained_weights:
            _load_backbone_weights(net, pretrained_weights)
        _adapt_first_conv(net, in_channels)
        net.fc = nn.Linear(net.fc.in_features, n_heads * n_classes)
        self.net = net
        self.n_heads = n_heads
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(x.shape[0], self.n_heads, self.n_classes)


class LateFusion(nn.Module):
    """The single-light networks side by side: head k is member k applied to light k's channels."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x[:, 3 * k : 3 * k + 3]) for k, m in enumerate(self.members)], dim=1)


def create_model(spec: ModelSpec, pretrained_weights: str | None = None) -> nn.Module:
    """The network for `spec` (method, backbone, lights, classes); logits [B, n_heads, n_classes]."""
    check_backbone(spec.backbone)
    k = spec.num_classes
    if spec.method == "late":
        members = [BackboneNet(spec.backbone, 3, 1, k, pretrained_weights) for _ in spec.modalities]
        return LateFusion(members)
    if spec.method == "mimo":
        return BackboneNet(spec.backbone, spec.in_channels, spec.num_heads, k, pretrained_weights)
    # single (3 channels) and early (3M channels): one head.
    return BackboneNet(spec.backbone, spec.in_channels, 1, k, pretrained_weights)
