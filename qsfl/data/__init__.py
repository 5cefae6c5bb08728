"""Datasets (built-in and local-file loaders) and client partitions."""

from qsfl.data.datasets import DATASETS, Dataset, load_dataset
from qsfl.data.partition import PARTITIONS, partition

__all__ = ["DATASETS", "PARTITIONS", "Dataset", "load_dataset", "partition"]
