"""The micro-batch stream each rank feeds to megatron-core's pipeline schedule.

As in Megatron-LM (``get_batch_on_this_tp_rank`` and ``pretrain_gpt.get_batch``):

* Only tensor-parallel rank 0 reads the dataset; it broadcasts each micro-batch to its TP
  peers, which hold the same pipeline stage and need the same tensors.
* A pipeline stage receives only what it uses: the first stage the model's inputs (tokens,
  position ids), the last stage the targets and masks of the loss. A middle stage loads
  nothing - unless document masks are on, when every stage needs the tokens to find the
  document boundaries for its attention (Megatron-LM gives middle stages no attention mask
  at all; we do not drop the masks there).
* Samples are read by ``--num-workers`` DataLoader worker processes (persistent, with
  prefetch), so loading overlaps compute, and micro-batches reach the schedule one at a
  time, as it asks for them, not as one collected global batch.

Under the interleaved schedule each model chunk pulls from its own iterator; the chunks of
one rank share the micro-batches they need (read and broadcast once, released when every
chunk that needs them has had them).
"""

from __future__ import annotations

import atexit
import os
import signal
import weakref
from typing import Iterator, Optional, Sequence

import torch

from megatron_ixt.config.schema import Config
from megatron_ixt.data.batch import INPUT_FIELDS, INTEGER_FIELDS, Batch, boundary_field, dataset_fields
from megatron_ixt.runtime.distributed import ParallelLayout
from megatron_ixt.runtime.kernels import current_device
from megatron_ixt.runtime.lifecycle import preemption_signals_blocked


class PretrainingSampler:
    """Megatron-LM's pretraining sampler: sequential over the (already shuffled) dataset,
    starting at ``consumed_samples``; yields this DP rank's indices of each micro-batch."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int) -> None:
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = data_parallel_rank
        self.step = micro_batch_size * data_parallel_size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // self.step

    def __iter__(self) -> Iterator[list[int]]:
        start = self.consumed_samples + self.dp_rank * self.micro_batch_size
        for base in range(start, self.total_samples - self.step + 1 + self.dp_rank * self.micro_batch_size, self.step):
            yield list(range(base, base + self.micro_batch_size))


class ValidationSampler:
    """Endless evaluations of ``samples_per_eval`` samples each. Each one continues where the
    previous one stopped (Megatron-LM's behaviour) and restarts at the beginning when the rest
    of the split is too short; the position is ``consumed_samples``, so a resumed run evaluates
    on the same samples as an uninterrupted one."""

    def __init__(self, total_samples: int, consumed_samples: int, samples_per_eval: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int) -> None:
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.samples_per_eval = samples_per_eval
        self.micro_batch_size = micro_batch_size
        self.dp_rank = data_parallel_rank
        self.step = micro_batch_size * data_parallel_size

    def __iter__(self) -> Iterator[list[int]]:
        consumed = self.consumed_samples
        while True:
            start = consumed % (self.total_samples - self.samples_per_eval + 1)
            for base in range(start, start + self.samples_per_eval, self.step):
                first = base + self.dp_rank * self.micro_batch_size
                yield list(range(first, first + self.micro_batch_size))
            consumed += self.samples_per_eval


def samples_per_evaluation(cfg: Config, split_size: int) -> int:
    """``--eval-iters`` global batches, or as many whole global batches as the split has."""
    gbs = cfg.training.global_batch_size
    return min(cfg.training.eval_iters * gbs, split_size - split_size % gbs)


def stage_fields(available: Sequence[str], first_stage: bool, last_stage: bool, document_masks: str,
                 boundary_field: str = "tokens") -> tuple[str, ...]:
    """The batch fields one pipeline stage (one model chunk) uses; ``boundary_field`` is where
    the document boundaries come from (the EOD ``tokens``; SFT: the ``position_ids``)."""
    needed = set()
    if first_stage:
        needed.update(INPUT_FIELDS)
    if last_stage:
        needed.update(f for f in available if f not in INPUT_FIELDS)
    if document_masks != "none":
        needed.add(boundary_field)  # every stage's attention needs the document boundaries
    return tuple(f for f in available if f in needed)


def chunk_fields(available: Sequence[str], layout: ParallelLayout, document_masks: str,
                 boundary_field: str = "tokens") -> list[tuple[str, ...]]:
    """:func:`stage_fields` of each model chunk on this rank (one chunk without the
    interleaved schedule)."""
    stages = [k if layout.vpp else None for k in range(layout.num_chunks)]
    return [stage_fields(available, layout.is_first_stage(k), layout.is_last_stage(k), document_masks, boundary_field)
            for k in stages]


_open_streams: "weakref.WeakSet[MicroBatchStream]" = weakref.WeakSet()
_worker_processes: list = []  # every DataLoader worker this process started


@atexit.register  # after multiprocessing's own exit hook is registered, so it runs before it
def _close_open_streams() -> None:
    """Close the streams still open, then SIGKILL any worker left by a stream that was dropped
    without ``close()``: workers ignore SIGTERM, and multiprocessing's own exit hook (which
    sends SIGTERM, then waits) would otherwise wait for them forever."""
    for stream in list(_open_streams):
        stream.close()
    _kill_left(_worker_processes)


def _kill_left(workers) -> None:
    """SIGKILL the workers (started by this process) that are still running."""
    for worker in workers:
        if worker._parent_pid == os.getpid() and worker.is_alive():
            worker.kill()
            worker.join()


class StackFields:
    """The DataLoader's ``collate_fn``: the fields a stage uses, stacked into one int64 and one
    float32 buffer of ``[fields, micro_batch_size, seq_length]``. Two shared-memory transfers
    per micro-batch from a worker, two host-to-device copies and two broadcasts to the TP
    peers, instead of one of each per field."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.groups = [(names, dtype) for names, dtype in (
            (tuple(f for f in fields if f in INTEGER_FIELDS), torch.int64),
            (tuple(f for f in fields if f not in INTEGER_FIELDS), torch.float32)) if names]

    def __call__(self, samples: list[dict]) -> list[torch.Tensor]:
        return [torch.stack([torch.stack([s[n] for s in samples]) for n in names]).to(dtype)
                for names, dtype in self.groups]


class MicroBatchStream:
    """This rank's micro-batches as :class:`Batch` es on the current device.

    ``source`` yields :class:`StackFields` buffers; it is read only on TP rank 0, and only if
    some chunk needs a field. ``iterators()`` gives the schedule its data iterator (a list of
    per-chunk iterators under the interleaved schedule); a chunk that needs no field gets
    ``None`` for each micro-batch."""

    def __init__(self, source: Optional[Iterator[list]], fields_per_chunk: list[tuple[str, ...]],
                 shape: tuple[int, int], layout: ParallelLayout) -> None:
        self.source = source
        self.fields_per_chunk = fields_per_chunk
        self.fields = tuple(dict.fromkeys(f for fields in fields_per_chunk for f in fields))
        self.collate = StackFields(self.fields)
        self.shape = shape
        self.device = current_device()
        self.layout = layout
        self.loads = bool(self.fields) and layout.tp_rank == 0
        self._consumers = sum(1 for f in fields_per_chunk if f)
        self._buffer: dict[int, list] = {}  # micro-batch number -> [batch, chunks yet to take it]
        self._fetched = 0
        self._iterators = [self._chunk_iterator(k) for k in range(len(fields_per_chunk))]
        _open_streams.add(self)

    def close(self) -> None:
        """Stop the loader's worker processes: the DataLoader iterator's own graceful shutdown
        (called here, not left to the garbage collector, which could run it in a process forked
        later), then SIGKILL for any left, since workers ignore SIGTERM
        (``_ignore_stop_signals``; Python's exit would otherwise wait on them forever)."""
        source, self.source = self.source, None
        workers = list(getattr(source, "_workers", ()))  # torch's multi-process iterator keeps them here
        if hasattr(source, "_shutdown_workers"):
            source._shutdown_workers()
        _kill_left(workers)

    def iterators(self):
        return self._iterators[0] if len(self._iterators) == 1 else self._iterators

    def _chunk_iterator(self, chunk: int) -> Iterator[Optional[Batch]]:
        if not self.fields_per_chunk[chunk]:
            while True:
                yield None
        n = 0
        while True:
            if n == self._fetched:
                self._buffer[n] = [self._next_batch(), self._consumers]
                self._fetched += 1
            entry = self._buffer[n]
            entry[1] -= 1
            if entry[1] == 0:
                del self._buffer[n]
            n += 1
            yield entry[0]

    def _next_batch(self) -> Batch:
        """TP rank 0 reads the next buffers; with TP > 1 they are broadcast to its peers, which
        know the fields and shapes already and receive into empty buffers."""
        if self.loads:
            buffers = [b.to(self.device, non_blocking=True) for b in next(self.source)]
        else:
            buffers = [torch.empty((len(names), *self.shape), dtype=dtype, device=self.device)
                       for names, dtype in self.collate.groups]
        if self.layout.tp > 1:
            for buf in buffers:
                torch.distributed.broadcast(buf, self.layout.tp_src_rank, group=self.layout.tp_group)
        fields = {}
        for (names, _), buf in zip(self.collate.groups, buffers):
            fields.update(zip(names, buf.unbind(0)))
        return Batch(**fields)


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave the preemption signals (SIGTERM, SLURM's warning SIGUSR1) and
    SIGINT to the training process. SLURM and torchrun signal every process of the step or
    process group; a worker killed by the signal would make the DataLoader
    raise in the training process before its handler could save the checkpoint. Workers end
    when the training process closes its streams (``MicroBatchStream.close``, also at exit) or
    dies (torch's worker loop watches its parent)."""

    from megatron_ixt.runtime.lifecycle import PREEMPTION_SIGNALS

    for signum in (*PREEMPTION_SIGNALS, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _stream(cfg: Config, layout: ParallelLayout, dataset, batch_sampler, document_masks: str,
            exclude: tuple = ()) -> MicroBatchStream:
    available = tuple(f for f in dataset_fields(dataset) if f not in exclude)
    per_chunk = chunk_fields(available, layout, document_masks, boundary_field(cfg.data.sft))
    stream = MicroBatchStream(None, per_chunk, (cfg.training.micro_batch_size, cfg.model.seq_length), layout)
    if stream.loads:
        workers = cfg.data.num_workers
        # The workers start here (persistent), with the preemption signals blocked until
        # _ignore_stop_signals ignores them: none dies of a warning in between.
        with preemption_signals_blocked():
            stream.source = iter(torch.utils.data.DataLoader(
                dataset, batch_sampler=batch_sampler, collate_fn=stream.collate, num_workers=workers,
                persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None,  # micro-batches per worker
                pin_memory=stream.device.type == "cuda", worker_init_fn=_ignore_stop_signals,
                # Its own generator: a DataLoader iterator otherwise draws its base seed from the
                # global RNG, which would shift dropout masks after a resume.
                generator=torch.Generator().manual_seed(cfg.training.seed)))
        _worker_processes.extend(getattr(stream.source, "_workers", ()))  # persistent: started already
    return stream


def training_stream(cfg: Config, layout: ParallelLayout, dataset, consumed_samples: int,
                    document_masks: str) -> MicroBatchStream:
    """The training micro-batches from ``consumed_samples`` on (``token_level`` is only
    reported by evaluation, so training does not move it). Each step pulls as many as its
    global batch has, which may ramp up (``--rampup-batch-size``): every micro-batch takes the
    next micro batch x DP samples, so after any step the stream stands at the consumed samples,
    where a resumed run's stream starts."""
    sampler = PretrainingSampler(len(dataset), consumed_samples, cfg.training.micro_batch_size,
                                 layout.dp_rank, layout.dp)
    return _stream(cfg, layout, dataset, sampler, document_masks, exclude=("token_level",))


def validation_stream(cfg: Config, layout: ParallelLayout, dataset, consumed_samples: int,
                      document_masks: str) -> MicroBatchStream:
    """All future evaluations' micro-batches (:class:`ValidationSampler`), from one
    persistent loader."""
    sampler = ValidationSampler(len(dataset), consumed_samples, samples_per_evaluation(cfg, len(dataset)),
                                cfg.training.micro_batch_size, layout.dp_rank, layout.dp)
    return _stream(cfg, layout, dataset, sampler, document_masks)
