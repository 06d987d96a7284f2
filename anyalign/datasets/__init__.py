"""Readers for real labelled data sets: UEA time series (IMU), class folders, csv manifests, ESC-50, UrbanSound8K."""

from .labelled import LabelledDataset, LabelledItem, load_labelled
from .uea import UEADataset, load_uea

__all__ = ["LabelledDataset", "LabelledItem", "UEADataset", "load_labelled", "load_uea"]
