#!/usr/bin/env python3
"""Reference peer for `ferrovision bench depthwise`: depthwise conv forward + backward in PyTorch.

Times F.conv2d with groups = channels (no bias, padding kernel // 2) followed by a backward pass
for the input and weight gradients, on random NCHW float32 inputs with 2 threads (the machine
ferrovision targets), at the depthwise layers of MobileNetV2 / EfficientNet-B0 at 224x224 input.
Prints seconds per step for each layer, like ferrovision's bench. Not run in CI; needs torch.

    python3 bench/pytorch_depthwise_bench.py
    python3 bench/pytorch_depthwise_bench.py --shape 576,14,3,2 --steps 20
"""
import argparse
import time

import torch
import torch.nn.functional as F

# (channels, size, kernel, stride): the same list as ferrovision's bench::DEPTHWISE_SHAPES.
SHAPES = [
    (32, 112, 3, 1),
    (96, 112, 3, 2),
    (144, 56, 3, 1),
    (144, 56, 5, 2),
    (240, 28, 5, 1),
    (480, 14, 3, 1),
    (672, 14, 5, 1),
    (576, 14, 3, 2),
    (960, 7, 3, 1),
    (1152, 7, 5, 1),
]


def seconds_per_step(channels, size, kernel, stride, batch, steps, warmup):
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    weight = (0.1 * torch.randn(channels, 1, kernel, kernel)).requires_grad_()
    elapsed = 0.0
    for i in range(warmup + steps):
        start = time.perf_counter()
        y = F.conv2d(x, weight, None, stride, kernel // 2, 1, channels)
        x.grad, weight.grad = None, None
        # Like burn's `y.backward()`, which starts from a new output gradient of ones.
        y.backward(torch.ones_like(y))
        if i >= warmup:
            elapsed += time.perf_counter() - start
    return elapsed / steps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", action="append", metavar="C,HW,K,S",
                   help="only this layer, as CHANNELS,SIZE,KERNEL,STRIDE (repeatable)")
    args = p.parse_args()
    shapes = [tuple(int(n) for n in shape.split(",")) for shape in args.shape] if args.shape else SHAPES

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"pytorch {torch.__version__} depthwise conv forward + backward, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, {torch.get_num_threads()} threads")
    print(f"{'layer':<18} {'pytorch s':>10}")
    for channels, size, kernel, stride in shapes:
        seconds = seconds_per_step(channels, size, kernel, stride, args.batch, args.steps, args.warmup)
        layer = f"{channels}@{size}x{size} k{kernel} s{stride}"
        print(f"{layer:<18} {seconds:>10.4f}")


if __name__ == "__main__":
    main()
