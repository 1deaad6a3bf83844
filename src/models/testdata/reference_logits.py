"""Writes reference_logits.txt: the logits of the reference PyTorch models (10 classes, eval
mode) for one deterministic input, with every parameter and BatchNorm statistic set by a formula
of its state-dict key that the forward test in ../mod.rs recomputes. Equal logits mean equal
layer structure, padding, activations and normalization, not only equal parameter shapes.

Format: one line per case: `<our model name> <input size> <logit> <logit> ...`. Run with
torchvision and efficientnet-lite-pytorch installed:

    python3 src/models/testdata/reference_logits.py
"""

import os

import numpy as np
import torch
import torchvision.models as tv
from efficientnet_lite_pytorch import EfficientNet

HERE = os.path.dirname(os.path.abspath(__file__))
M32 = (1 << 32) - 1


def uniform(name, count):
    """`count` values in [0, 1) from a hash of `name` and the index (FNV-1a, then a murmur3 mix)."""
    seed = 0x811C9DC5
    for byte in name.encode():
        seed = ((seed ^ byte) * 0x01000193) & M32
    h = (np.uint64(seed) + np.arange(count, dtype=np.uint64) * np.uint64(2654435761)) & np.uint64(M32)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(M32)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & np.uint64(M32)
    h ^= h >> np.uint64(16)
    return (h.astype(np.float64) / 2.0**32).astype(np.float32)


def value(key, shape):
    """Weights uniform with variance 1/fan_in; BatchNorm scales and variances in [0.5, 1.5);
    biases and means in [-0.1, 0.1)."""
    u = uniform(key, int(np.prod(shape, dtype=np.int64)))
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        v = (u - 0.5) * 2.0 * np.float32(np.sqrt(3.0 / fan_in))
    elif leaf in ("running_var", "weight"):
        v = 0.5 + u
    else:
        v = (u - 0.5) * 0.2
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


CASES = [
    ("resnet18", 64, lambda s: tv.resnet18(num_classes=10)),
    ("resnet50", 64, lambda s: tv.resnet50(num_classes=10)),
    ("vgg16_bn", 64, lambda s: tv.vgg16_bn(num_classes=10)),
    ("mobilenet_v2", 64, lambda s: tv.mobilenet_v2(num_classes=10)),
    ("efficientnet_b0", 64, lambda s: tv.efficientnet_b0(num_classes=10)),
    ("efficientnet_b5", 64, lambda s: tv.efficientnet_b5(num_classes=10)),
    # The package pads for the image size it is built for (static "SAME" padding).
    ("efficientnet_lite0", 64, lambda s: EfficientNet.from_name("efficientnet-lite0", num_classes=10, image_size=s)),
    ("efficientnet_lite0", 57, lambda s: EfficientNet.from_name("efficientnet-lite0", num_classes=10, image_size=s)),
]

lines = []
for name, size, make in CASES:
    model = make(size).eval()
    state = {k: (v if k.endswith("num_batches_tracked") else value(k, tuple(v.shape))) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    x = ((uniform("input", 3 * size * size) - 0.5) * 2.0).reshape(1, 3, size, size)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))[0]
    lines.append(" ".join([name, str(size), *(f"{v:.7e}" for v in logits.tolist())]))
    print(lines[-1])

with open(os.path.join(HERE, "reference_logits.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
