"""The input layer: every dataset file or folder becomes `Record`s (`records.py`); readers of real data sets."""

from .records import LabelledDataset, Record, read_labelled, read_records
from .uea import UEADataset, load_uea

__all__ = ["LabelledDataset", "Record", "UEADataset", "read_labelled", "read_records", "load_uea"]
