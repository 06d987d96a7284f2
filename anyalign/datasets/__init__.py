"""Readers for real labelled data sets: UEA time series (IMU), class folders, csv manifests, ESC-50, UrbanSound8K."""

from .uea import UEADataset, load_uea

__all__ = ["UEADataset", "load_uea"]
