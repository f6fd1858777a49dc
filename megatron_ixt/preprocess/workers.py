"""The preprocessing pool's worker side: each worker process builds its encoder once (its
tokenizer loaded once) and encodes the line batches it is sent. Documents go to
``encode.BatchEncoder``, conversations (``--sft``) to ``encode_sft.ConversationEncoder``; this
module is the one that knows both, so neither encoder module imports the other's.
"""

from __future__ import annotations

from typing import Optional

from megatron_ixt.format.sources import LineBatch
from megatron_ixt.preprocess.encode import BatchEncoder, BatchResult, EncodeSettings
from megatron_ixt.preprocess.encode_sft import ConversationEncoder

_WORKER: Optional[BatchEncoder] = None


def init_worker(settings: EncodeSettings) -> None:
    """Pool initializer: build this process's encoder (tokenizer loaded once per worker)."""
    global _WORKER
    _WORKER = ConversationEncoder(settings) if settings.sft else BatchEncoder(settings)


def encode_in_worker(batch: LineBatch) -> BatchResult:
    return _WORKER.encode(batch)


def scores_in_worker(batch: LineBatch) -> BatchResult:
    return _WORKER.scores(batch)
