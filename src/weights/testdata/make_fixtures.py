"""Writes the small PyTorch checkpoints the weight-reader tests read (run once; outputs committed).

A tiny conv -> batchnorm -> linear state dict saved in every form the reader must accept:
the zip format (PyTorch >= 1.6), the legacy pre-1.6 format, nested under `state_dict` with other
entries beside it (as Lightning writes), and in half precision. `tiny_values.json` holds the
values for the checks. Needs `pip install torch`.
"""
import json
import os

import torch

torch.manual_seed(0)
here = os.path.dirname(os.path.abspath(__file__))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=True)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)


model = Tiny()
with torch.no_grad():
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    model.bn.weight.uniform_(0.5, 2)
    model.bn.bias.uniform_(-1, 1)
sd = model.state_dict()
torch.save(sd, os.path.join(here, "tiny_zip.pth"))
torch.save(sd, os.path.join(here, "tiny_legacy.pth"), _use_new_zipfile_serialization=False)
torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"lr": 0.1}}, os.path.join(here, "tiny_nested.pth"))
torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, os.path.join(here, "tiny_half.pth"))
values = {k: {"shape": list(v.shape), "values": v.flatten().tolist()} for k, v in sd.items() if v.is_floating_point()}
with open(os.path.join(here, "tiny_values.json"), "w") as f:
    json.dump(values, f)
