"""Batches of graphs read by a torch DataLoader: `data.num_workers` worker processes read
(and, for a dataset stored without neighbour lists, build) the graphs of the coming batches
while the main process trains; 0 reads them in the main process. The batches (lists of
indices) are made by the trainer, so the order does not depend on the number of workers.
A structure that cannot be read comes back as `Failed` (one line, raised as an InputError by
the caller) rather than as a worker traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from forcefield.errors import InputError


@dataclass
class Failed:
    message: str


class _Graphs(Dataset):
    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            return self.source.graph(int(i))
        except InputError as exc:
            return Failed(str(exc))


def _keep(items: List):
    for item in items:
        if isinstance(item, Failed):
            return item
    return items


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def batch_loader(source, batches: Sequence[Sequence[int]], num_workers: int = 0) -> Iterable:
    """Lists of graphs (or a `Failed`), one per entry of `batches`, in order."""
    batches = [list(map(int, b)) for b in batches]
    if num_workers <= 0:
        return DataLoader(_Graphs(source), batch_sampler=batches, collate_fn=_keep, num_workers=0)
    source.close()  # no open HDF5 handle crosses the fork: each worker opens its own
    return DataLoader(
        _Graphs(source),
        batch_sampler=batches,
        collate_fn=_keep,
        num_workers=num_workers,
        worker_init_fn=_one_thread,
        prefetch_factor=4,
    )
