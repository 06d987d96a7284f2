"""Resuming a multi-process map-style run mid-epoch reads that epoch's batches (the 2-process resume bug).

accelerate's `set_epoch` on a `skip_first_batches` loader never reached the sampler under a `BatchSamplerShard`
(2+ processes), so a run resumed in epoch e >= 1 read epoch 0's order and per-item draws: DDP and FSDP resumes of
the joint recipe (tests/test_fsdp.py) gave different losses from step 3 on. `epoch_batches` sets it directly.
The end-to-end check (2 processes, accumulation, resumed == uninterrupted) is tests/test_fsdp.py (slow)."""

from __future__ import annotations

import pytest
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from torch.utils.data import DataLoader, Dataset

from anyalign.align.data import EpochSampler
from anyalign.align.run_data import epoch_batches


class _Keys(Dataset):  # the sampler's (epoch, index) keys, as PairedDataset receives them
    def __len__(self) -> int:
        return 36

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key


class _Acc:  # what epoch_batches uses of the accelerator
    skip_first_batches = staticmethod(skip_first_batches)


def _prepared(world: int, rank: int) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(36, seed=3)
    loader = DataLoader(_Keys(), batch_size=12, sampler=sampler, drop_last=True, collate_fn=list)
    return prepare_data_loader(loader, num_processes=world, process_index=rank, split_batches=True,
                               put_on_device=False), sampler


@pytest.mark.parametrize(("world", "rank"), [(1, 0), (2, 0), (2, 1)])
@pytest.mark.parametrize(("epoch", "skip"), [(1, 1), (2, 2), (1, 0)])
def test_resumed_epoch_reads_that_epochs_batches(world: int, rank: int, epoch: int, skip: int) -> None:
    """A fresh loader (as after `--resume`) asked for epoch e from batch k yields the uninterrupted run's batches."""
    loader, _ = _prepared(world, rank)
    sampler = loader.batch_sampler.batch_sampler.sampler if world > 1 else loader.batch_sampler.sampler
    uninterrupted = [b for e in range(epoch + 1) for b in epoch_batches(_Acc, loader, sampler, e)]
    fresh, fresh_sampler = _prepared(world, rank)
    resumed = list(epoch_batches(_Acc, fresh, fresh_sampler, epoch, skip))
    assert resumed == uninterrupted[epoch * 3 + skip:]
    assert all(e == epoch for b in resumed for e, _ in b)  # the dataset's per-item draws use this epoch too
    assert len(resumed[0]) == 12 // world
