"""Training batches as a pure function of ``(seed, step)``, from memory or streamed by loader workers.

The batch of step ``s`` never depends on the steps before it, so a run resumed at step ``s``
(after a crash, or a roll-back) continues with exactly the batches an uninterrupted run sees:

- an in-memory dataset is read in epochs: epoch ``e``'s order is a permutation seeded by
  ``(seed, e)`` (:func:`epoch_order`), and step ``s`` takes the ``s mod steps_per_epoch``-th
  slice of it;
- a :class:`~msflow.data.stream.CropStream` makes draws ``s * B ... s * B + B - 1``, each a
  pure function of ``(seed, k)``, in ``torch.utils.data`` worker processes when ``workers > 0``.

With several ranks, each takes its slice ``shard = (first, stop)`` of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from msflow.data.dataset import ImageDataset
from msflow.data.stream import CropStream
from msflow.errors import MsflowError, ShapeError

Batch = tuple[Tensor, "Tensor | None"]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of ``epoch``: a permutation that depends only on ``(seed, epoch)``.

    Example:
        >>> torch.equal(epoch_order(10, 3, 2), epoch_order(10, 3, 2)), sorted(epoch_order(5, 0, 0).tolist())
        (True, [0, 1, 2, 3, 4])
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _one_thread(_: int) -> None:
    # Workers decode and resample images; their own intra-op threads would only fight the trainer's.
    torch.set_num_threads(1)


class StepBatches:
    """``batches.iterate(step)`` yields ``(x, cond or None)`` for steps ``step, step + 1, ...``.

    Args:
        dataset: an in-memory :class:`ImageDataset` (or :class:`PairedDataset`) or a :class:`CropStream`.
        batch_size: images per step over all ranks.
        seed: the run's seed.
        shard: ``(first, stop)``: this rank's slice of each global batch.
        workers: loader worker processes for a stream (0: draw in this process).

    Example:
        >>> ds = ImageDataset(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1))
        >>> batches = StepBatches(ds, 4, seed=0)
        >>> a = [x.flatten().tolist() for x, _ in batches.take(0, 3)]
        >>> a[2] == [x.flatten().tolist() for x, _ in batches.take(2, 1)][0]  # step 2 alone: same batch
        True
    """

    def __init__(
        self,
        dataset: ImageDataset | CropStream,
        batch_size: int,
        seed: int,
        shard: tuple[int, int] | None = None,
        workers: int = 0,
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.first, self.stop = shard or (0, batch_size)
        self.workers = workers
        self.streamed = isinstance(dataset, CropStream)
        self._order: tuple[int, Tensor | None] = (-1, None)
        if not self.streamed and len(dataset) // batch_size == 0:
            raise ShapeError(f"train.batch_size={batch_size} exceeds the {len(dataset)} training images; lower it")

    def keys(self, step: int) -> list[int]:
        """This rank's dataset keys of ``step``."""
        if self.streamed:
            return list(range(step * self.batch_size + self.first, step * self.batch_size + self.stop))
        epoch, offset = divmod(step, len(self.dataset) // self.batch_size)
        if self._order[0] != epoch:  # one permutation per epoch, not per step
            self._order = (epoch, epoch_order(len(self.dataset), self.seed, epoch))
        order = self._order[1]
        return order[offset * self.batch_size : (offset + 1) * self.batch_size][self.first : self.stop].tolist()

    def iterate(self, step: int) -> Iterator[Batch]:
        """Batches of steps ``step, step + 1, ...`` (endless)."""
        if not self.streamed:
            conds = getattr(self.dataset, "conds", None)
            while True:
                idx = torch.tensor(self.keys(step))
                yield self.dataset.images[idx], None if conds is None else conds[idx]
                step += 1
        loader = DataLoader(
            self.dataset,
            batch_sampler=_StepKeys(self, step),
            num_workers=self.workers,
            worker_init_fn=_one_thread if self.workers else None,
            prefetch_factor=2 if self.workers else None,
            # Its own generator: a loader draws a worker seed when it starts, which must not move
            # the global RNG (restored on resume, and used by some models while training).
            generator=torch.Generator().manual_seed(self.seed),
        )
        try:
            for x, cond in loader:
                yield x, cond if cond.numel() else None  # plain crops carry an empty condition
        except MsflowError as err:
            # A worker's error comes back wrapped in its traceback ("Caught DataError in DataLoader
            # worker process 0 ... Original Traceback ..."): the user needs only its last line.
            last = str(err).strip().splitlines()[-1]
            raise type(err)(last.split(f"{type(err).__name__}: ", 1)[-1]) from None

    def take(self, step: int, n: int) -> list[Batch]:
        """The batches of steps ``step .. step + n - 1``."""
        it = self.iterate(step)
        return [next(it) for _ in range(n)]


class _StepKeys:
    """The endless batch sampler of a stream: the keys of each step from ``start`` on."""

    def __init__(self, batches: StepBatches, start: int) -> None:
        self.batches, self.start = batches, start

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.batches.keys(step)
            step += 1
