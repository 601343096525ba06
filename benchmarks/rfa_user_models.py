"""User-style models and data for benchmarks/rfa_speed.py (issue 9): architectures that are NOT the built-ins.

Loaded by deletion requests as `model.arch: python:rfa_user_models:<callable>`; rfa_speed.py copies this file
beside the requests it writes, so the models go through the tool's real `python:` model path.

- user_cnn:    2 conv + 2 linear layers (the issue's "small CNN"), for 1x28x28 inputs.
- user_resnet: 3 residual blocks with BatchNorm (~77k parameters), for 1x28x28 inputs.
- user_mlp:    64-128-64-10 MLP over 8x8 digits (the issue's MLP).
- cifar_resnet18: torchvision's ResNet-18 with a CIFAR stem (3x3 conv, no max-pool), for 3x32x32 inputs.

`digits28(seed)` builds the 28x28 data: scikit-learn digits upsampled to 28x28 and augmented with small
random shifts and rotations (deterministic), split by *original* image so that no augmented copy of a test
image is in the train split. `digits8_random_split(seed)` is the MLP user's random 1437/360 split.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class UserCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 7 * 7, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class UserResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = Block(16, 16, 1)
        self.layer2 = Block(16, 32, 2)
        self.layer3 = Block(32, 64, 2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class UserMLP(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                 nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def user_cnn(num_classes: int = 10) -> nn.Module:
    return UserCNN(num_classes)


def user_resnet(num_classes: int = 10) -> nn.Module:
    return UserResNet(num_classes)


def user_mlp(num_classes: int = 10) -> nn.Module:
    return UserMLP(num_classes)


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    import torchvision

    m = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


# ---------------------------------------------------------------- data


def _augment(x: torch.Tensor, gen: torch.Generator, max_shift: float = 2.0, max_deg: float = 12.0) -> torch.Tensor:
    """Small random rotations (±max_deg) and shifts (±max_shift pixels of 28) of (N, 1, 28, 28) images."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_deg)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (max_shift * 2 / 28)
    cos, sin = ang.cos(), ang.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def digits28(seed: int = 0, copies: int = 3, test_fraction: float = 0.2):
    """(x_train, y_train, x_test, y_test): 1797 digits -> 28x28, split by original, `copies` augmented views each.

    With the defaults: 1437 originals x 3 = 4311 train images, 360 x 3 = 1080 test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x8 = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x8, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4))  # MNIST-like: a 20x20 digit centred in 28x28
    y = torch.from_numpy(d.target).long()
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=d.target)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for idx in (idx_tr, idx_te):
        xs = x[idx]
        views = [xs] + [_augment(xs, gen) for _ in range(copies - 1)]
        out += [torch.cat(views).clamp(0, 1).contiguous(), y[idx].repeat(copies)]
    return tuple(out)


def digits8_random_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): scikit-learn digits 8x8, a random (unstratified) 1437/360 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1000 + seed))
    tr, te = perm[:1437], perm[1437:]
    return x[tr].contiguous(), y[tr], x[te].contiguous(), y[te]


def cifar_like(seed: int = 0, n_train: int = 1000, n_test: int = 200, num_classes: int = 10):
    """Generated CIFAR-shaped data (3x32x32): a per-class colour/texture pattern plus noise. Not CIFAR."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 3, 8, 8, generator=gen)
    protos = F.interpolate(protos, size=(32, 32), mode="bilinear", align_corners=False)

    def make(n):
        y = torch.arange(n) % num_classes
        x = protos[y] * 0.6 + torch.rand(n, 3, 32, 32, generator=gen) * 0.4
        return x.contiguous(), y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return xtr, ytr, xte, yte
