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
    python3 bench/pytorch_train_bench.py --model mobilenet_v2 --size 128 --batch 32 --both-layouts
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


class MBConv(nn.Module):
    """Inverted residual without squeeze-excite, ReLU6 (EfficientNet-Lite's block)."""

    def __init__(self, cin, cout, expand, kernel, stride):
        super().__init__()
        mid = cin * expand
        layers = [] if expand == 1 else [conv_bn(cin, mid, 1), nn.ReLU6()]
        layers += [
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(),
            conv_bn(mid, cout, 1),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 as efficientnet-lite-pytorch builds it (no package needed): EfficientNet-B0's
    stages without squeeze-excite, ReLU6, stem 32 and head 1280: 4,652,008 parameters for 1000
    classes. Symmetric padding instead of TF's "same" padding: the same shapes and work."""

    STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]

    def __init__(self, num_classes=10):
        super().__init__()
        blocks, cin = [conv_bn(3, 32, 3, 2), nn.ReLU6()], 32
        for expand, kernel, stride, cout, repeats in self.STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        blocks += [conv_bn(cin, 1280, 1), nn.ReLU6()]
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.fc(self.dropout(x))


MODELS = {
    "resnet18_cifar": ResNet18Cifar,
    "fast_net": FastNet,
    "mobilenet_v2": torchvision_model("mobilenet_v2"),
    "efficientnet_b0": torchvision_model("efficientnet_b0"),
    "resnet18": torchvision_model("resnet18"),
    "resnet50": torchvision_model("resnet50"),
    "efficientnet_lite0": EfficientNetLite0,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet18_cifar", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="side of the random square input images")
    p.add_argument("--channels-last", action="store_true", help="time the channels_last memory layout only")
    p.add_argument("--both-layouts", action="store_true", help="time NCHW, then channels_last, and name the faster")
    p.add_argument("--infer", action="store_true", help="time eval-mode forward passes instead")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    device = torch.device(args.device)

    def wait():
        """GPU work is asynchronous: wait for it before reading the clock."""
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.set_num_threads(args.threads)
    layouts = ["nchw", "channels_last"] if args.both_layouts else ["channels_last" if args.channels_last else "nchw"]
    results = {layout: time_layout(args, device, wait, layout) for layout in layouts}
    if len(results) > 1:
        best = max(results, key=results.get)
        print(f"best: {best} {results[best]:.1f} img/s")


def time_layout(args, device, wait, layout):
    """Times the steps in one memory layout; prints and returns the images per second."""
    torch.manual_seed(0)
    model = MODELS[args.model]().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.arange(args.batch, device=device) % 10
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    mode = "inference" if args.infer else "training step"
    print(f"pytorch {torch.__version__} {mode}: {args.model} ({params:,} parameters), batch {args.batch}, {args.size}x{args.size}, "
          f"{layout}, {args.steps} timed steps after {args.warmup} warm-up, "
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
    rate = args.batch * args.steps / elapsed
    print(f"{rate:.1f} img/s")
    return rate


if __name__ == "__main__":
    main()
