"""Batched augmentations driven by an explicit torch.Generator (so resume is bit-identical and no
per-image Python loop or DataLoader worker is needed on a 2-core CPU). Every draw is made on the
generator's device: with the data and a generator on the GPU, augmentation never touches the host."""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from .rng import draw_device

_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


@lru_cache(maxsize=None)
def _on(name: str, device: torch.device) -> torch.Tensor:
    """A module constant on `device`, copied there once (a copy per call would be a host sync per step)."""
    return globals()[name].to(device)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad` reflect padding + horizontal flip (the AT recipe's augmentation)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dev = draw_device(gen, x)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    # gather rows/cols per sample with index arithmetic rather than a Python loop
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w))
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
    return (x * _on("_GRAY", x.device)).sum(1, keepdim=True)


def simclr(x: torch.Tensor, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
           jitter=(0.4, 0.4, 0.4, 0.1), p_jitter: float = 0.8, p_gray: float = 0.2) -> torch.Tensor:
    """SimCLR view: RandomResizedCrop(32, scale) + flip + ColorJitter(p) + grayscale(p).

    Batched reading of torchvision's transforms: crop and flip are one affine resampling
    (bilinear); jitter is applied in a fixed order (brightness, contrast, saturation, hue) and hue
    is a rotation of the chroma plane in YIQ space, a close stand-in for HSV hue shifts."""
    n, c, h, w = x.shape
    dev, at = x.device, draw_device(gen, x)  # where the images live, where the draws are made

    def uniform(lo, hi):
        return torch.empty(n, device=at).uniform_(lo, hi, generator=gen)

    def rand():
        return torch.rand(n, generator=gen, device=at)
    area = uniform(scale[0], scale[1])
    logr = uniform(math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(logr)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # crop width/height as fractions of the image
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = (rand() * 2 - 1) * (1 - cw)
    cy = (rand() * 2 - 1) * (1 - ch)
    flip = torch.where(rand() < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=at)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(dev), [n, c, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    b, co, s, hu = jitter
    apply = (rand() < p_jitter).view(n, 1, 1, 1).to(dev)
    fb = uniform(1 - b, 1 + b).view(n, 1, 1, 1).to(dev)
    fc = uniform(1 - co, 1 + co).view(n, 1, 1, 1).to(dev)
    fs = uniform(1 - s, 1 + s).view(n, 1, 1, 1).to(dev)
    fh = uniform(-hu, hu).to(dev) * 2 * math.pi
    j = (out * fb).clamp(0, 1)
    m = _gray(j).mean(dim=(2, 3), keepdim=True)
    j = ((j - m) * fc + m).clamp(0, 1)
    g = _gray(j)
    j = ((j - g) * fs + g).clamp(0, 1)
    j = _hue_rotate(j, fh).clamp(0, 1)
    out = torch.where(apply, j, out)
    gray = (rand() < p_gray).view(n, 1, 1, 1).to(dev)
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
    mat = _on("_YIQ2RGB", x.device) @ rot @ _on("_RGB2YIQ", x.device)  # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", mat, x)
