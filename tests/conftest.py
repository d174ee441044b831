import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def tiny_copy(tmp_path) -> Path:
    """A writable copy of the committed real-image fixture (3 classes + 4 bad files)."""
    dst = tmp_path / "tiny"
    shutil.copytree(TINY, dst)
    return dst


@pytest.fixture
def clean_folder(tmp_path) -> Path:
    """The fixture's good images only (no bad files), as an imagefolder."""
    dst = tmp_path / "clean"
    for p in TINY.glob("*/fm*.png"):
        (dst / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst / p.parent.name / p.name)
    return dst


def fit(net, x, y, steps: int, lr: float = 0.01):
    """Full-batch Adam on (x, y) for `steps` steps, then eval mode: a small real model for tests."""
    import torch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()
