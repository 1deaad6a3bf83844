#!/usr/bin/env python3
"""Reference peer for `ferrovision bench gemm`: the same f32 matrix products with torch.mm on the
CPU (2 threads by default), to put each convolution's GEMM next to what PyTorch's BLAS reaches.
Not run in CI; needs `pip install torch`.

    ferrovision bench gemm --model resnet18_cifar --batch 128     # prints a `shapes ...` line
    python3 bench/pytorch_gemm_bench.py --shapes 131072,27,64 131072,576,64 ...
"""
import argparse
import time

import torch


def seconds(m, k, n, steps):
    a, b = torch.randn(m, k), torch.randn(k, n)
    c = torch.empty(m, n)
    torch.mm(a, b, out=c)
    start = time.perf_counter()
    for _ in range(steps):
        torch.mm(a, b, out=c)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", required=True, help="M,K,N of each product")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--square", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"sgemm (torch.mm, f32, PyTorch {torch.__version__}), {args.threads} threads")
    print(f"{'M':>9} {'K':>6} {'N':>6} {'ms':>10} {'GFLOP/s':>9}")
    flops, total = 0.0, 0.0
    for text in args.shapes:
        m, k, n = (int(v) for v in text.split(","))
        t = seconds(m, k, n, args.steps)
        print(f"{m:>9} {k:>6} {n:>6} {1e3 * t:>10.2f} {2 * m * k * n / t / 1e9:>9.1f}")
        flops, total = flops + 2 * m * k * n, total + t
    print(f"{'all':>23} {1e3 * total:>10.2f} {flops / total / 1e9:>9.1f}")
    s = args.square
    t = seconds(s, s, s, args.steps)
    print(f"square {s}x{s}x{s}: {2 * s ** 3 / t / 1e9:.1f} GFLOP/s")
    print(f"{flops / total / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
