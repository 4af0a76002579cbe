"""Datasets as ``uint8`` image tensors: bundled real data (no download) and standard formats.

Example:
    >>> from msflow.data import get_dataset, list_datasets
    >>> get_dataset("digits8", "test").image_shape
    (1, 8, 8)
"""

from msflow.data.dataset import ImageDataset, pad_images
from msflow.data.pairs import PairedDataset
from msflow.data.registry import get_dataset, list_datasets

__all__ = ["ImageDataset", "PairedDataset", "get_dataset", "list_datasets", "pad_images"]
