#!/usr/bin/env python3
"""Reference peer for `ferrovision bench train`: the same training step in PyTorch.

Times forward + backward + SGD(momentum 0.9) steps on random 32x32 images with 2 threads (the
machine ferrovision targets) and ends with a line `<number> img/s`, like ferrovision's bench.
`--device cuda` times the step on the GPU instead (PyTorch's defaults: cuDNN may use TF32).
Not run in CI; needs `pip install torch`.

    python3 bench/pytorch_train_bench.py --batch 128                 # resnet18_cifar
    python3 bench/pytorch_train_bench.py --model fast_net --batch 512
    python3 bench/pytorch_train_bench.py --batch 256 --infer         # eval-mode forward only
    python3 bench/pytorch_train_bench.py --device cuda --batch 128   # next to `--device vulkan`
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, kernel=3, stride=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride)
        self.b = conv_bn(cout, cout)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """3x3 stem, no max-pool, stages 64-128-256-512 x 2 BasicBlocks: 11,173,962 parameters."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = conv_bn(3, 64)
        blocks, cin = [], 64
        for width, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class FastNet(nn.Module):
    """ferrovision's fast_net: stem 32, stages 32-128-256 of conv, max-pool, BN, ReLU, conv-BN-ReLU."""

    def __init__(self, num_classes=10, widths=(32, 128, 256)):
        super().__init__()
        self.stem = conv_bn(3, 32)
        stages, cin = [], 32
        for w in widths:
            stages.append(nn.ModuleList([nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), conv_bn(w, w)]))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for conv, bn, second in self.stages:
            x = F.relu(bn(F.max_pool2d(conv(x), 2)))
            x = F.relu(second(x))
        x = torch.amax(x, dim=(2, 3))
        return self.head(x) / 8.0


def torchvision_model(name):
    """An ImageNet architecture from torchvision with a 10-class head (imported on demand)."""
    def make(num_classes=10):
        import torchvision.models
        return getattr(torchvision.models, name)(num_classes=num_classes)
    return make


def efficientnet_lite0(num_classes=10):
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


MODELS = {
    "resnet18_cifar": ResNet18Cifar,
    "fast_net": FastNet,
    "mobilenet_v2": torchvision_model("mobilenet_v2"),
    "efficientnet_b0": torchvision_model("efficientnet_b0"),
    "resnet18": torchvision_model("resnet18"),
    "efficientnet_lite0": efficientnet_lite0,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet18_cifar", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="side of the random square input images")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--infer", action="store_true", help="time eval-mode forward passes instead")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    device = torch.device(args.device)

    def wait():
        """GPU work is asynchronous: wait for it before reading the clock."""
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MODELS[args.model]().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.arange(args.batch, device=device) % 10
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    mode = "inference" if args.infer else "training step"
    print(f"pytorch {torch.__version__} {mode}: {args.model} ({params:,} parameters), batch {args.batch}, {args.size}x{args.size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, "
          + (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"))

    if args.infer:
        model.eval()
        with torch.no_grad():
            for _ in range(args.warmup):
                model(x)
            wait()
            start = time.perf_counter()
            for _ in range(args.steps):
                model(x)
            wait()
            elapsed = time.perf_counter() - start
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        elapsed = 0.0
        for i in range(args.warmup + args.steps):
            wait()
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            wait()
            if i >= args.warmup:
                elapsed += time.perf_counter() - start
    print(f"{args.batch * args.steps / elapsed:.1f} img/s")


if __name__ == "__main__":
    main()
