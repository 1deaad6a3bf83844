"""Writes reference_state_dicts.txt.gz: every key of the reference PyTorch state dicts of the
ImageNet models (1000 classes) with its shape, for the key-mapping test in ../mod.rs.

Format: a line `# <our model name>` opens a model; then one line per key: `<key> <dim> <dim> ...`
(no dims for a scalar). Run with torchvision and efficientnet-lite-pytorch installed:

    python3 src/models/testdata/reference_state_dicts.py
"""

import gzip
import os

import torch
import torchvision.models as tv
from efficientnet_lite_pytorch import EfficientNet

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_LITE0 = os.path.join(HERE, "../../../../shared/weights/efficientnet-lite0-57934424.pth")

models = {name: getattr(tv, name)() for name in ["resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn", "mobilenet_v2"]}
models.update({f"efficientnet_b{i}": getattr(tv, f"efficientnet_b{i}")() for i in range(8)})
models.update({f"efficientnet_lite{i}": EfficientNet.from_name(f"efficientnet-lite{i}") for i in range(5)})

lines = []
for name, model in models.items():
    state = model.state_dict()
    if name == "efficientnet_lite0" and os.path.exists(SHIPPED_LITE0):
        # The package's definition must name and shape exactly what the shipped weights hold.
        shipped = torch.load(SHIPPED_LITE0, map_location="cpu")
        assert [(k, tuple(v.shape)) for k, v in shipped.items()] == [(k, tuple(v.shape)) for k, v in state.items()]
    lines.append(f"# {name}")
    lines += [" ".join([key, *map(str, tensor.shape)]) for key, tensor in state.items()]

# mtime 0 keeps the file byte-identical between runs.
with open(os.path.join(HERE, "reference_state_dicts.txt.gz"), "wb") as raw:
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(("\n".join(lines) + "\n").encode())
print(f"{len(lines)} lines")
