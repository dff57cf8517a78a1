"""Samplers shared by the DataModules."""

from __future__ import annotations

from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Epoch ``e`` visits indices ``[e * n, (e + 1) * n)``: fresh examples every epoch,
    the same ones for the same epoch (so resumed runs see the same stream).

    A dataset that draws example ``i`` from ``numpy.random.default_rng([seed, i])`` is
    then a pure function of the seed, the epoch and the position in the epoch, whatever
    the number of workers. Under DDP Lightning wraps this sampler in its
    ``DistributedSamplerWrapper``, which forwards ``set_epoch`` and hands each rank a
    disjoint share of the epoch's indices.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))

    def __len__(self) -> int:
        return self.n
