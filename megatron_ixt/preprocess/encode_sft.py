"""Worker side of ``tools/preprocess_data.py --sft``: one batch of conversation lines -> one
token shard and one roles shard.

Each line (``format/conversation.py``) is validated; its feedback, if any, becomes prefix
ids by the pretraining template (``format/prefixes.py``); each of its conversations is
rendered through the chat template with the feedback in the system message and encoded with
its per-token roles (``tokenizers/chat.py``). A conversation is one sequence of the indexed
dataset; the roles (in the loss, feedback, unconditioned-only) go to a parallel uint8 file,
so training reads both by memory map and never parses JSON. The side file's columns are the
feedback's token count (the dropout-removable prefix of pretraining) and the quality level.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from megatron_ixt.format.conversation import Conversation, parse_conversation_line
from megatron_ixt.format.errors import DocumentError, TokenizerError
from megatron_ixt.format.indexed_io import Shard, write_shard_bin
from megatron_ixt.format.sources import LineBatch
from megatron_ixt.preprocess.encode import BatchEncoder, BatchResult, EncodeSettings, KeyStats
from megatron_ixt.tokenizers.chat import FEEDBACK, LOSS, PLAIN, chat_template_for, encode_conversation


def _longest_variant(roles: np.ndarray) -> int:
    """Tokens of the longer of a stored sequence's two variants (``tokenizers.chat.variant``)."""
    return len(roles) - min(int(np.count_nonzero(roles & FEEDBACK)), int(np.count_nonzero(roles & PLAIN)))


class ConversationEncoder(BatchEncoder):
    """Turns ``LineBatch``es of conversations into token and roles shards."""

    def __init__(self, settings: EncodeSettings):
        super().__init__(settings)
        self.chat_template = chat_template_for(self.tokenizer)
        self.eod = self.tokenizer.eod

    def _parse(self, batch: LineBatch, result: BatchResult) -> Optional[list[tuple[int, Conversation]]]:
        spec = self.settings.spec
        parsed = []
        for offset, raw in enumerate(batch.lines):
            line = batch.first_line + offset
            try:
                parsed.append((line, parse_conversation_line(raw, batch.path, line, spec.feedback_key,
                                                             spec.default_scale)))
            except DocumentError as error:
                if not self._skip(error, result):
                    return None
        return parsed

    def _fit(self, turns: list, feedback, path: str, line: int, stats: KeyStats):
        """The stored sequence of one conversation, each variant at most ``seq_length + 1``
        tokens (``--overlong``): whole, or without its trailing turns (``truncate``: the longest
        leading part that ends with an assistant turn and fits, so the sequence ends as the
        template ends a turn); None when not even its first assistant turn fits (``truncate``),
        or when it does not fit (``drop``); counted either way. ``refuse`` raises."""
        ids, roles = encode_conversation(self.tokenizer, self.chat_template, turns, feedback, eod=self.eod)
        limit = None if self.settings.seq_length is None else self.settings.seq_length + 1
        if limit is None or _longest_variant(roles) <= limit:
            return ids, roles
        if self.settings.overlong == "refuse":
            raise DocumentError(path, line, "messages", f"a conversation of at most {limit} tokens "
                                f"(--seq-length {self.settings.seq_length} + 1)",
                                detail=f"it has {_longest_variant(roles)}; pass --overlong truncate to cut it "
                                       "after its last turn that fits, or --overlong drop")
        if self.settings.overlong == "truncate":
            ends = [i + 1 for i, turn in enumerate(turns) if turn["role"] == "assistant"][:-1]
            for end in reversed(ends):
                ids, roles = encode_conversation(self.tokenizer, self.chat_template, turns[:end], feedback, eod=self.eod)
                if _longest_variant(roles) <= limit:
                    stats.truncated += 1
                    return ids, roles
        stats.dropped += 1
        return None

    def encode(self, batch: LineBatch) -> BatchResult:
        result = BatchResult(index=batch.index, lines=len(batch.lines), nbytes=batch.nbytes)
        parsed = self._parse(batch, result)
        if parsed is None:
            return result
        conversations = [c for _, c in parsed]
        levels = self._levels(conversations)
        feedback = self._prefixes(conversations, levels)  # the pretraining prefixes, the same cache

        stats = KeyStats()
        tokens, roles, lengths, side = [], [], [], []
        per_line = []  # sequences per line (a line may hold several conversations)
        for j, (line, conversation) in enumerate(parsed):
            try:
                encoded = [self._fit(turns, feedback[j], batch.path, line, stats) for turns in conversation.conversations]
                encoded = [e for e in encoded if e is not None]
            except TokenizerError as error:  # a template that cannot render this conversation
                if not self._skip(DocumentError(batch.path, line, "messages", "a conversation the chat template "
                                                "renders", detail=str(error)), result):
                    return result
                continue
            except DocumentError as error:  # --overlong refuse
                if not self._skip(error, result):
                    return result
                continue
            per_line.append(len(encoded))
            for ids, r in encoded:
                tokens.append(ids)
                roles.append(r)
                lengths.append(len(ids))
                n_feedback = int(np.count_nonzero(r & FEEDBACK))
                side.append((n_feedback, levels[j]))
                stats.prefix_tokens += n_feedback
                stats.prefixed_documents += bool(n_feedback)
                stats.loss_tokens += int(np.count_nonzero((r & LOSS) & ((r & PLAIN) == 0)))
            result.documents += 1
            result.annotated += bool(levels[j])
            result.level_counts[int(levels[j])] += 1

        flat = np.concatenate(tokens).astype(self.dtype) if tokens else np.zeros(0, self.dtype)
        flat_roles = np.concatenate(roles) if roles else np.zeros(0, np.uint8)
        stats.sequences = len(lengths)
        stats.tokens = int(flat.size)
        key = self.settings.spec.json_keys[0]
        shard = Shard(bin_path=None, num_tokens=int(flat.size), sequence_lengths=np.asarray(lengths, np.int32),
                      sequences_per_document=np.asarray(per_line, np.int32),
                      side=np.asarray(side, dtype=np.int32).reshape(-1, 2))
        if flat.size:
            base = os.path.join(self.settings.shard_dir, f"b{batch.index:09d}.k0")
            shard.bin_path, shard.roles_path = base + ".bin", base + ".roles.bin"
            write_shard_bin(shard.bin_path, flat)
            write_shard_bin(shard.roles_path, flat_roles)
        result.shards[key] = shard
        result.stats[key] = stats
        return result

