"""Reference outputs for the numerical-parity check of ferrovision's architectures.

For every architecture, builds the reference PyTorch definition (torchvision; the PyPI package
`efficientnet-lite-pytorch` for EfficientNet-Lite) with fixed random weights and BatchNorm
statistics calibrated on random batches, and writes into OUT/<name>/:
  weights.pth  the state dict (zip format), as a user's checkpoint would be
  io.pth       {"input": a fixed batch, "output": the eval-mode logits}
`bench/parity/run.sh` runs this and then `cargo run --release --example parity -- OUT`.
"""
import os
import sys

import torch
import torchvision.models as tv
from efficientnet_lite_pytorch import EfficientNet

out = sys.argv[1] if len(sys.argv) > 1 else ".cache/parity"
only = set(sys.argv[2:])
torch.set_num_threads(max(1, os.cpu_count() or 1))


def lenet5():
    # The layout ferrovision's `lenet5` follows: two 5x5 convs each followed by tanh and 2x2
    # average pooling, then three fully connected layers with tanh, for 32x32 RGB input.
    class LeNet5(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 6, 5)
            self.conv2 = torch.nn.Conv2d(6, 16, 5)
            self.fc1 = torch.nn.Linear(16 * 5 * 5, 120)
            self.fc2 = torch.nn.Linear(120, 84)
            self.fc3 = torch.nn.Linear(84, 1000)

        def forward(self, x):
            x = torch.nn.functional.avg_pool2d(torch.tanh(self.conv1(x)), 2)
            x = torch.nn.functional.avg_pool2d(torch.tanh(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))

    return LeNet5()


def lite(i):
    return EfficientNet.from_name(f"efficientnet-lite{i}")


# name -> (constructor, input side)
MODELS = {
    "lenet5": (lenet5, 32),
    "resnet18": (tv.resnet18, 224),
    "resnet34": (tv.resnet34, 224),
    "resnet50": (tv.resnet50, 224),
    "vgg16": (tv.vgg16, 224),
    "vgg16_bn": (tv.vgg16_bn, 224),
    "mobilenet_v2": (tv.mobilenet_v2, 224),
    **{f"efficientnet_b{i}": (getattr(tv, f"efficientnet_b{i}"), 224) for i in range(8)},
    **{f"efficientnet_lite{i}": ((lambda i=i: lite(i)), size) for i, size in enumerate([224, 240, 260, 280, 300])},
}

for name, (make, side) in MODELS.items():
    if only and name not in only:
        continue
    torch.manual_seed(0)
    model = make()
    # Random affine BatchNorm parameters, and running statistics calibrated on random batches (as
    # training would leave them), so that eval-mode activations stay O(1) through deep nets.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.reset_running_stats()
                module.momentum = None
        model.train()
        for seed in (2, 3):
            model(torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(seed)))
    model.eval()
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(folder, "weights.pth"))
    torch.save({"input": x, "output": y}, os.path.join(folder, "io.pth"))
    print(f"{name}: input {tuple(x.shape)}, output {tuple(y.shape)}", flush=True)
