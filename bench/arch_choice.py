"""Model choice for the CPU profile: 3-step L2 AT throughput of airbench widths, with and without
channels_last (batch 256).

    python -m bench.arch_choice
"""
import time

import torch
import torch.nn.functional as F

from bench.common import hardware
from pipeline.attacks import pgd
from pipeline.models import AirbenchNet


def main():
    print(f"hardware: {hardware()}")
    for widths in ((32, 64, 128), (48, 96, 192), (64, 128, 256)):
        for channels_last in (False, True):
            torch.manual_seed(0)
            model = AirbenchNet(widths)
            x = torch.rand(256, 3, 32, 32)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (256,))
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            for it in range(4):
                if it == 1:
                    t0 = time.perf_counter()
                model.eval()
                xa = pgd(model, x, y, "l2", 0.5, 3, 0.4167)
                model.train()
                loss = F.cross_entropy(model(xa), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            rate = 3 * 256 / (time.perf_counter() - t0)
            print(f"airbench {widths} {'channels_last' if channels_last else 'contiguous':13s} {rate:6.0f} img/s")


if __name__ == "__main__":
    main()
