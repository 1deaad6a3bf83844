#!/usr/bin/env python3
"""Speed-run peer for issue 19: the airbench94 recipe in PyTorch on the CPU.

airbench94 is Keller Jordan's CIFAR-10 speed run, "94% on CIFAR-10 in 3.29 seconds on a single
GPU" (arXiv:2404.00498; code github.com/KellerJordan/cifar10-airbench, airbench94.py). This is an
independent re-write of that recipe for a CPU, so that a ferrovision speed run has a PyTorch
figure beside it on the same machine and the same data:

- fp32 instead of fp16, channels_last (`--layout nchw` for the other memory layout),
  `torch.set_num_threads(--threads)` (default 2);
- the JPEG CIFAR-10 of ../shared/data/cifar10-jpeg.tar.gz (what ferrovision reads), decoded with
  Pillow once and cached as .npy files in `--cache`;
- everything else as published: batch 1024, label smoothing 0.2, Nesterov SGD (momentum 0.85) with
  the learning rate and weight decay given per 1024 examples, 64x learning rate for BatchNorm
  biases, a frozen 2x2 whitening first layer built from the patch covariance of 5000 training
  images (its bias trains for 3 epochs), three conv groups 64/256/256 of conv, max-pool,
  BatchNorm, GELU, conv, BatchNorm, GELU, a 0.2 -> 1 -> 0.07 step schedule peaking at 23%,
  lookahead towards an EMA every 5 steps, alternating flip, random translate by 2 with reflect
  padding, and 6-view test-time augmentation (flip x translate by 1).

Times are printed the way the paper counts them (whitening + training + final TTA evaluation; the
per-epoch test evaluation is left out) and also as the script's whole wall time. Not run in CI;
needs `pip install torch numpy pillow`.

    python3 bench/pytorch_airbench94.py                          # the recipe: 9.9 epochs
    python3 bench/pytorch_airbench94.py --limit 100 --epochs 1   # smoke run: 100 images per class
"""
import argparse
import io
import math
import os
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The paper normalises with the statistics of the original release; kept as published.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# Hyperparameters of airbench94 (learning rate and weight decay per 1024 examples).
BATCH = 1024
LR = 11.5
MOMENTUM = 0.85
WEIGHT_DECAY = 0.0153
BIAS_LR_SCALE = 64.0
LABEL_SMOOTHING = 0.2
WHITEN_BIAS_EPOCHS = 3
WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.6  # the paper's convention: the share of the old running statistic kept
LOGIT_SCALE = 1 / 9
TRANSLATE = 2
WHITEN_IMAGES = 5000
# The memory layout of images and weights (`--layout`).
MEMORY_FORMAT = torch.channels_last


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def decode_split(tar_path, split):
    """Decode `split/<class>/<n>.jpg` from the archive into uint8 NHWC images and labels.

    Images are interleaved by class (image n of every class, then n + 1, ...), so any prefix of the
    arrays is class-balanced: the whitening layer's first 5000 images and `--limit` both rely on it.
    """
    pattern = re.compile(rf"(?:^|/){split}/([a-z]+)/(\d+)\.jpe?g$")
    from PIL import Image

    found = []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            m = pattern.search(member.name)
            if not m or not member.isfile():
                continue
            if m.group(1) not in CLASSES:
                raise SystemExit(f"{tar_path}: {member.name}: unknown class folder {m.group(1)!r}, expected one of {CLASSES}")
            data = tar.extractfile(member).read()
            image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            if image.shape != (32, 32, 3):
                raise SystemExit(f"{tar_path}: {member.name}: image is {image.shape}, expected 32x32 RGB")
            found.append((int(m.group(2)), CLASSES.index(m.group(1)), image))
    if not found:
        raise SystemExit(f"{tar_path}: no images under {split}/<class>/")
    found.sort(key=lambda t: (t[0], t[1]))
    images = np.stack([t[2] for t in found])
    labels = np.array([t[1] for t in found], dtype=np.int64)
    return images, labels


def load_split(tar_path, cache_dir, split):
    """Decoded images and labels of one split, from `cache_dir` when decoded before."""
    stem = cache_dir / f"cifar10-jpeg-{split}"
    paths = (stem.with_name(stem.name + "-images.npy"), stem.with_name(stem.name + "-labels.npy"))
    if all(p.exists() and p.stat().st_mtime >= tar_path.stat().st_mtime for p in paths):
        return np.load(paths[0]), np.load(paths[1])
    images, labels = decode_split(tar_path, split)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for path, array in zip(paths, (images, labels)):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)  # a killed run never leaves half a cache behind
    return images, labels


def to_tensor(images, limit):
    """uint8 NHWC -> normalised fp32 NCHW in MEMORY_FORMAT; `limit` keeps that many per class."""
    if limit is not None:
        images = images[: limit * len(CLASSES)]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=MEMORY_FORMAT)


class TrainBatches:
    """Alternating flip + random translate, one shuffled pass per epoch, whole batches only.

    A random half of the images is flipped once at the start; every odd epoch then flips all of
    them, so each image is seen mirrored and unmirrored on consecutive epochs (the paper's
    "alternating flip"). Translation crops a 32x32 window from the reflect-padded images.
    """

    def __init__(self, images, labels, batch_size):
        flip = torch.rand(len(images)) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        self.padded = F.pad(images, (TRANSLATE,) * 4, mode="reflect")
        self.labels = labels
        self.batch_size = batch_size
        self.epoch = 0

    def __len__(self):
        return len(self.labels) // self.batch_size

    def translated(self):
        n, side = len(self.labels), self.padded.shape[-1] - 2 * TRANSLATE
        shifts = torch.randint(0, 2 * TRANSLATE + 1, (n, 2))
        out = torch.empty((n, 3, side, side)).contiguous(memory_format=MEMORY_FORMAT)
        # One slice per offset pair (25 of them) instead of one per image.
        for dy in range(2 * TRANSLATE + 1):
            for dx in range(2 * TRANSLATE + 1):
                pick = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                out[pick] = self.padded[pick, :, dy:dy + side, dx:dx + side]
        return out

    def __iter__(self):
        images = self.translated()
        if self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(self.labels))
        for i in range(len(self)):
            pick = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[pick].contiguous(memory_format=MEMORY_FORMAT), self.labels[pick]


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

def conv(cin, cout, kernel=3, padding="same", bias=False):
    """A conv whose first `cin` filters start as the identity (Dirac), the rest as PyTorch's default."""
    layer = nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias)
    with torch.no_grad():
        nn.init.dirac_(layer.weight[: min(cin, cout)])
        if bias:
            layer.bias.zero_()
    return layer


def batch_norm(channels):
    """BatchNorm with a fixed scale of 1 (only the bias learns), eps 1e-12."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=1 - BN_MOMENTUM)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = conv(cin, cout)
        self.norm1 = batch_norm(cout)
        self.conv2 = conv(cout, cout)
        self.norm2 = batch_norm(cout)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        # 12 whitening filters and their negatives over 2x2 patches, no padding: 32 -> 31 pixels.
        self.whiten = conv(3, 24, kernel=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        groups, cin = [], 24
        for width in WIDTHS:
            groups.append(ConvGroup(cin, width))
            cin = width
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(cin, len(CLASSES), bias=False)

    def forward(self, x):
        x = self.groups(F.gelu(self.whiten(x)))
        x = F.max_pool2d(x, 3).flatten(1)  # the last group leaves 3x3 pixels
        return self.head(x) * LOGIT_SCALE

    def init_whitening(self, images, eps=5e-4):
        """Filters = eigenvectors of the 2x2x3 patch covariance, scaled by 1/sqrt(eigenvalue + eps)."""
        k = self.whiten.kernel_size[0]
        patches = images.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        # Largest eigenvalue first, as the paper orders them.
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = (eigenvectors / torch.sqrt(eigenvalues + eps).view(-1, 1)).view(-1, 3, k, k)
        with torch.no_grad():
            self.whiten.weight.copy_(torch.cat([filters, -filters]))


class Lookahead:
    """Every few steps, pull the EMA copy of all float state towards the weights, then reset the
    weights to it. `decay` 1.0 at the end leaves the weights at the EMA."""

    def __init__(self, model):
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model, decay):
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.ema[key].lerp_(value, 1 - decay)
                value.copy_(self.ema[key])


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------

def predict(model, images, tta, batch=2000):
    """Logits; with `tta` the 6-view average: (plain + flipped) / 2 weighted 1/2, and the mean of
    that pair over the two 1-pixel diagonal translations weighted 1/2."""

    def both_flips(x):
        return 0.5 * model(x) + 0.5 * model(x.flip(-1))

    model.eval()
    out = []
    with torch.no_grad():
        for x in images.split(batch):
            if not tta:
                out.append(model(x))
                continue
            padded = F.pad(x, (1,) * 4, mode="reflect")
            shifted = [padded[:, :, :32, :32], padded[:, :, 2:, 2:]]
            translated = torch.stack([both_flips(s) for s in shifted]).mean(0)
            out.append(0.5 * both_flips(x) + 0.5 * translated)
    return torch.cat(out)


def accuracy(model, images, labels, tta):
    return (predict(model, images, tta).argmax(1) == labels).float().mean().item()


def lr_factor(step, total):
    """Linear 0.2 -> 1.0 over the first 23% of steps, then linear 1.0 -> 0.07."""
    warmup = int(total * 0.23)
    if step < warmup:
        return 0.2 + 0.8 * step / warmup
    return 1.0 - 0.93 * (step - warmup) / (total - warmup)


def train(args, train_x, train_y, test_x, test_y):
    batch = min(BATCH, len(train_y))
    loader = TrainBatches(train_x, train_y, batch)
    total_steps = math.ceil(len(loader) * args.epochs)

    # Nesterov SGD in PyTorch's form: divide the per-1024-example rate by the step growth that
    # momentum brings, and express weight decay relative to each group's learning rate.
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr = LR / kilostep
    wd = WEIGHT_DECAY * batch / kilostep
    model = Net().to(memory_format=MEMORY_FORMAT)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    norm_biases = [p for name, p in params if "norm" in name]
    others = [p for name, p in params if "norm" not in name]
    lr_bias = lr * BIAS_LR_SCALE
    optimizer = torch.optim.SGD(
        [dict(params=norm_biases, lr=lr_bias, weight_decay=wd / lr_bias), dict(params=others, lr=lr, weight_decay=wd / lr)],
        momentum=MOMENTUM,
        nesterov=True,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, reduction="sum")
    ema_decay = 0.95**5 * (torch.arange(total_steps + 1) / total_steps) ** 3
    print(f"{len(train_y)} training images, batch {batch}, {len(loader)} steps an epoch, {total_steps} steps in {args.epochs} epochs")

    timed = 0.0
    start = time.perf_counter()
    model.init_whitening(train_x[:WHITEN_IMAGES])
    lookahead = Lookahead(model)
    timed += time.perf_counter() - start
    print(f"whitening layer: {timed:.2f} s")

    step = 0
    for epoch in range(math.ceil(args.epochs)):
        start = time.perf_counter()
        model.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)
        model.train()
        seen = 0
        for x, y in loader:
            out = model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            seen += len(y)
            if step % 5 == 0:
                lookahead.update(model, ema_decay[step].item())
            if step >= total_steps:
                lookahead.update(model, 1.0)
                break
        seconds = time.perf_counter() - start
        timed += seconds
        line = (f"epoch {epoch + 1}: {seconds:.1f} s ({seen / seconds:.0f} img/s), "
                f"last batch loss {loss.item() / len(y):.4f} acc {(out.argmax(1) == y).float().mean().item():.4f}")
        if args.epoch_eval:
            line += f", test acc {accuracy(model, test_x, test_y, tta=False):.4f} (not timed)"
        print(line, flush=True)

    start = time.perf_counter()
    tta_acc = accuracy(model, test_x, test_y, tta=True)
    seconds = time.perf_counter() - start
    timed += seconds
    print(f"TTA evaluation of {len(test_y)} test images: {seconds:.1f} s")
    return tta_acc, timed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=float, default=9.9)
    p.add_argument("--limit", type=int, help="images per class, of both splits (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--cache", type=Path, default=REPO / ".cache/airbench94", help="folder for the decoded .npy arrays")
    p.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last",
                   help="memory layout of images and weights")
    p.add_argument("--epoch-eval", action=argparse.BooleanOptionalAction, default=True,
                   help="test accuracy (no TTA) after each epoch, outside the timed total")
    args = p.parse_args()
    if args.epochs <= 0 or (args.limit is not None and args.limit <= 0):
        p.error("--epochs and --limit must be positive")
    if not args.data.exists():
        p.error(f"{args.data}: not found (the JPEG CIFAR-10 of ../shared/data; see --data)")

    global MEMORY_FORMAT
    MEMORY_FORMAT = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    wall = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"pytorch {torch.__version__}, {torch.get_num_threads()} threads, fp32 {args.layout}, seed {args.seed}")

    start = time.perf_counter()
    splits = [load_split(args.data, args.cache, s) for s in ("train", "test")]
    (train_x, train_y), (test_x, test_y) = [
        (to_tensor(x, args.limit), torch.from_numpy(y[: None if args.limit is None else args.limit * len(CLASSES)]))
        for x, y in splits
    ]
    print(f"data: {len(train_y)} train + {len(test_y)} test images from {args.data} in {time.perf_counter() - start:.1f} s")

    tta_acc, timed = train(args, train_x, train_y, test_x, test_y)
    print(f"test accuracy {tta_acc * 100:.2f}% (flip + translate TTA)")
    print(f"training time {timed:.1f} s (whitening + epochs + TTA evaluation, as the paper counts)")
    print(f"total wall time {time.perf_counter() - wall:.1f} s")


if __name__ == "__main__":
    main()
