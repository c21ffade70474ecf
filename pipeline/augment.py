"""Batched augmentations driven by an explicit torch.Generator (so resume is bit-identical and no
per-image Python loop or DataLoader worker is needed on a 2-core CPU)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _rand(n, gen, device):
    return torch.rand(n, generator=gen).to(device)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad` reflect padding + horizontal flip (the AT recipe's augmentation)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    # gather rows/cols per sample with index arithmetic rather than a Python loop
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols).to(x.device)
    c = x.shape[1]
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad))
    out = out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
    return _like(out, x)


def _like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return `out` in the memory format of `x` (channels_last stays channels_last)."""
    fmt = torch.channels_last if not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format
    return out.contiguous(memory_format=fmt)


def _gray(x):
    return (x * _GRAY.to(x.device)).sum(1, keepdim=True)


def simclr(x: torch.Tensor, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
           jitter=(0.4, 0.4, 0.4, 0.1), p_jitter: float = 0.8, p_gray: float = 0.2) -> torch.Tensor:
    """SimCLR view: RandomResizedCrop(32, scale) + flip + ColorJitter(p) + grayscale(p).

    Batched reading of torchvision's transforms: crop and flip are one affine resampling
    (bilinear); jitter is applied in a fixed order (brightness, contrast, saturation, hue) and hue
    is a rotation of the chroma plane in YIQ space, a close stand-in for HSV hue shifts."""
    n, c, h, w = x.shape
    dev = x.device
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen)
    logr = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(logr)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # crop width/height as fractions of the image
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - cw)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(dev), [n, c, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    b, co, s, hu = jitter
    apply = (torch.rand(n, generator=gen) < p_jitter).view(n, 1, 1, 1).to(dev)
    fb = torch.empty(n).uniform_(1 - b, 1 + b, generator=gen).view(n, 1, 1, 1).to(dev)
    fc = torch.empty(n).uniform_(1 - co, 1 + co, generator=gen).view(n, 1, 1, 1).to(dev)
    fs = torch.empty(n).uniform_(1 - s, 1 + s, generator=gen).view(n, 1, 1, 1).to(dev)
    fh = torch.empty(n).uniform_(-hu, hu, generator=gen).to(dev) * 2 * math.pi
    j = (out * fb).clamp(0, 1)
    m = _gray(j).mean(dim=(2, 3), keepdim=True)
    j = ((j - m) * fc + m).clamp(0, 1)
    g = _gray(j)
    j = ((j - g) * fs + g).clamp(0, 1)
    j = _hue_rotate(j, fh).clamp(0, 1)
    out = torch.where(apply, j, out)
    gray = (torch.rand(n, generator=gen) < p_gray).view(n, 1, 1, 1).to(dev)
    out = torch.where(gray, _gray(out).expand(-1, 3, -1, -1), out)
    return _like(out, x)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    n = len(x)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(n, 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    mat = _YIQ2RGB.to(x.device) @ rot @ _RGB2YIQ.to(x.device)  # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", mat, x)
