"""Networks, registered by name. Inputs are images in [0,1]; every model normalises inside
`forward` (normalisation done outside is the classic attack-library bug).

`features(x)` is the penultimate representation g(x), `head(g)` maps it to logits, and
`forward(x) = head(features(x))` gives f(x, ·).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .params import ArchParams

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _conv_bn(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(cout), nn.GELU()]
    return layers


WHITEN_EPS = 2e-3
"""Added to every eigenvalue before the whitening stem divides by its square root, so it caps the gain of
the quietest patch directions at 1/√eps (≈ 22×). airbench uses 5e-4 (gain up to ≈ 45×); CIFAR-10's 2×2
patches have directions of variance 1e-4 … 7e-3 (normalised units), where pixel noise of σ = 0.03 (PSNR
30 dB, invisible) dominates, so at 5e-4 the judge's features moved more for that noise than for
Gaussian blobs and the judge failed its noise control on 3 of 3 seeds on AMD Zen 4 (docs/judge.md).
2e-3 is the smallest of the values measured (5e-4, 2e-3, 1e-2) under which noised images sit clearly
between real images and the seeds; 1e-2 made the judge blind to blur against the seeds. Same accuracy."""


class AirbenchNet(nn.Module):
    """airbench-style CIFAR net: a 2x2 patch stem, three conv-pool-BN groups, global max pool.
    Small enough for CPU adversarial training (≈20 M MACs per image at widths 32/64/128).

    `whiten`: the stem is airbench's frozen patch-whitening layer, set from data by
    `init_whitening` before training. `tta='flip'`: in eval mode, features are averaged over the
    image and its mirror (the head is linear, so logits are averaged too)."""

    def __init__(self, widths=(32, 64, 128), num_classes: int = 10, stem: int = 24, whiten: bool = False,
                 tta: str = "none"):
        super().__init__()
        w1, w2, w3 = widths
        self.normalize = Normalize()
        self.body = nn.Sequential(
            nn.Conv2d(3, stem, 2, padding=0, bias=True), nn.GELU(),
            *_conv_bn(stem, w1, True), *_conv_bn(w1, w1, False),
            *_conv_bn(w1, w2, True), *_conv_bn(w2, w2, False),
            *_conv_bn(w2, w3, True), *_conv_bn(w3, w3, False),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.feature_dim = w3
        self.fc = nn.Linear(w3, num_classes, bias=False)
        self.whiten, self.tta = whiten, tta
        if whiten:
            self.body[0].weight.requires_grad_(False)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = WHITEN_EPS) -> None:
        """Set the stem to the whitening transform of the 2x2 patches of `images` (uint8 or [0,1]
        float, N×3×H×W; airbench uses 5,000): W = [V/√(λ+eps); −V/√(λ+eps)], λ,V the eigenpairs of
        the patch covariance of the normalised images, largest first. Float64, so every CPU agrees."""
        stem = self.body[0]
        k = stem.kernel_size[0]
        x = images.double() / 255.0 if images.dtype == torch.uint8 else images.double()
        x = (x.cpu() - self.normalize.mean.double().cpu()) / self.normalize.std.double().cpu()
        c = x.shape[1]
        patches = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        cov = patches.T @ patches / len(patches)
        lam, vec = torch.linalg.eigh(cov)
        lam, vec = lam.flip(0), vec.T.flip(0).reshape(c * k * k, c, k, k)
        scaled = vec / torch.sqrt(lam + eps).view(-1, 1, 1, 1)
        if stem.out_channels != 2 * len(scaled):
            raise ValueError(f"whitening needs a stem of {2 * len(scaled)} channels, not {stem.out_channels}")
        stem.weight.copy_(torch.cat([scaled, -scaled]).to(stem.weight.dtype))

    def _mirror(self, x):
        return (self.body(self.normalize(x)) + self.body(self.normalize(x.flip(3)))) / 2

    def features(self, x):
        if self.training or self.tta == "none":
            return self.body(self.normalize(x))
        if self.tta == "flip":
            return self._mirror(x)
        # flip_translate (airbench's level 2): half the mirror average, half that of the image
        # shifted one pixel up-left and down-right (reflect padding); 6 passes
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = (self._mirror(padded[..., 0:h, 0:w]) + self._mirror(padded[..., 2:h + 2, 2:w + 2])) / 2
        return 0.5 * self._mirror(x) + 0.5 * shifted

    def head(self, feats):
        return self.fc(feats)

    def forward(self, x):
        return self.head(self.features(x))


class CifarResNet(nn.Module):
    """torchvision ResNet with the CIFAR stem (3x3 conv, stride 1, no max pool)."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        from torchvision.models import resnet18, resnet50
        net = {18: resnet18, 50: resnet50}[depth](num_classes=num_classes)
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net
        self.normalize = Normalize()

    def features(self, x):
        return self.net(self.normalize(x))

    def head(self, feats):
        return self.fc(feats)

    def forward(self, x):
        return self.head(self.features(x))


ARCHITECTURES: dict[str, Callable[[ArchParams, int], nn.Module]] = {
    "airbench": lambda p, k: AirbenchNet(tuple(p.widths), k, whiten=p.whiten, tta=p.tta),
    "resnet18": lambda p, k: CifarResNet(18, k),
    "resnet50": lambda p, k: CifarResNet(50, k),
}


def build_classifier(arch: ArchParams, num_classes: int = 10) -> nn.Module:
    return ARCHITECTURES[arch.name](arch, num_classes)


class ContrastiveModel(nn.Module):
    """Encoder + projection head; `embed(x)` is ĝ(x), L2-normalised, for f(x, x') = ĝ(x)·ĝ(x')/τ."""

    def __init__(self, arch: ArchParams, proj_dim: int = 128):
        super().__init__()
        self.encoder = build_classifier(arch, num_classes=1)
        self.encoder.fc = nn.Identity()  # encoder.features is used; no class head
        d = self.encoder.feature_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim))
        self.feature_dim = d

    def features(self, x):
        return self.encoder.features(x)

    def embed(self, x):
        return F.normalize(self.head(self.features(x)).float(), dim=1)  # fp32 even under bf16 autocast

    def forward(self, x):
        return self.embed(x)


class LinearProbe(nn.Module):
    """Frozen encoder + a linear classifier: a classifier the attack engine can evaluate."""

    def __init__(self, encoder: ContrastiveModel, num_classes: int = 10):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.feature_dim, num_classes)

    def features(self, x):
        return self.encoder.features(x)

    def forward(self, x):
        return self.fc(self.features(x))
