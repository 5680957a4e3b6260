"""The embedded demo data: 2,000 Fashion-MNIST test images (MIT; see vrcurve/demo/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Source

DEMO_FILE = Path(__file__).resolve().parent.parent / "demo" / "fashion_mnist_test_2000.npz"


class DemoSource(Source):
    """The demo images as 1 x 28 x 28 float32, scaled from [0, 255] to [-1, 1] as image trainers do."""

    name = "demo"
    format = "demo"

    def __init__(self):
        with np.load(DEMO_FILE) as f:
            self._images = f["images"]
        self.n = int(self._images.shape[0])
        self.shape = (1, 28, 28)

    def read(self, indices):
        x = self._images[np.asarray(indices)].astype(np.float32)
        return (x / 127.5 - 1.0)[:, None]
