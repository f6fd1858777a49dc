"""An lm-evaluation-harness backend on this project's inference engine, at any TP x PP layout,
conditioned on a chosen feedback.

:class:`IXTLM` is lm-eval's ``TemplateLM``, so its tasks, few-shot contexts, filters and
metrics run unchanged (``tools/evaluate_benchmarks.py``). It answers lm-eval's three requests:

* ``loglikelihood``: the log-probability of a continuation after a context, and whether
  greedy decoding would have produced it, from one batched forward pass per batch of
  requests (``InferenceModel.token_scores``: losses over the tokenizer's ids, argmax across TP
  shards, the result broadcast from the last pipeline stage);
* ``loglikelihood_rolling``: a document's log-probability in windows of the model's length,
  as lm-eval's ``hf`` backend cuts them;
* ``generate_until``: batched greedy or sampled generation with the KV cache
  (``evaluation.generation``), stopping at the task's ``until`` strings.

Every rank runs lm-eval and calls these methods in the same order (each is collective over the
model's process groups); every rank reports itself as lm-eval's rank 0 of 1, lm-eval's own
convention under tensor-parallel launchers, and only global rank 0 writes results.

**Feedback.** A context is what the model saw in training before a document's text:
``[start] [feedback prefix] text`` (``evaluation.control``), so every request of a task is
scored or continued under the same feedback: none, a quality level, or a written critique.
With ``--chat`` (an SFT model), lm-eval renders each request through the tokenizer's chat
template (``apply_chat_template``) and the feedback goes into the system message, as SFT
trained it: the rendered text carries the feedback's place as a mark that :meth:`tok_encode`
replaces with the feedback's ids (``tokenizers.chat.encode_rendered``).

**Parity with lm-eval's ``hf`` backend**, on the same model without feedback: the same
context/continuation split (``TemplateLM._encode_pair``), the same left truncation of long
contexts (the last ``max_length`` tokens for scoring; ``max_length - max_gen_toks`` before
generating), the same stop-string handling (lm-eval's ``handle_stop_sequences`` and
``postprocess_generated_text``), the EOD as end of text. Where the two can differ: an empty
context is the model's document start (or its EOD), where ``hf`` takes the tokenizer's BOS.
"""

from __future__ import annotations

from typing import Optional

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from megatron_ixt.evaluation.control import Conditioner
from megatron_ixt.evaluation.generation import Request, SamplingConfig, generate


class IXTLM(TemplateLM):
    """lm-eval's view of an ``InferenceModel`` under the feedback of ``control``."""

    def __init__(self, model, tokenizer, control: Conditioner, batch_size: int = 16, max_gen_toks: int = 256,
                 seed: int = 0, show_progress: bool = True) -> None:
        super().__init__()
        self.model, self.tokenizer, self.control = model, tokenizer, control
        self._batch_size, self._max_gen_toks, self.seed = batch_size, max_gen_toks, seed
        self.show_progress = show_progress
        self.max_length = model.cfg.model.seq_length

    # -- what lm-eval asks of every backend --------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eod

    @property
    def prefix_token_id(self) -> int:
        start = self.model.document_start_ids
        return start[0] if start else self.tokenizer.eod

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(self.model.cfg.tokenizer.tokenizer_model or self.model.cfg.tokenizer.tokenizer_type)

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        """``[start] [feedback] text`` (lm-eval's "special tokens" are what precedes a text:
        ``add_special_tokens=False`` gives the text's ids alone). With ``--chat``, ``string``
        is a conversation rendered by :meth:`apply_chat_template`, feedback mark included."""
        if self.control.config.chat:
            from megatron_ixt.tokenizers.chat import encode_rendered

            return encode_rendered(self.tokenizer, string, self.control.prefix).tolist()
        ids = list(self.tokenizer.tokenize(string)) if string else []
        return ids if add_special_tokens is False else self._conditioning() + ids

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.detokenize(list(tokens))

    def _conditioning(self) -> list[int]:
        """What precedes every text: the document start and the feedback prefix."""
        return self.model.text_start(self.control.prefix)

    def chat_template(self, chat_template=False) -> Optional[str]:
        if not chat_template:
            return None
        from megatron_ixt.tokenizers.chat import chat_template_for

        return chat_template_for(self.tokenizer).source

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        from megatron_ixt.tokenizers.chat import chat_template_for, with_feedback

        messages = list(chat_history)
        if self.control.config.system is not None and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": self.control.config.system})
        if self.control.config.chat and self.control.prefix:  # else the feedback stays a prefix (tok_encode)
            messages = with_feedback(messages)
        return chat_template_for(self.tokenizer).render(messages, add_generation_prompt=add_generation_prompt)

    # -- loglikelihood -----------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's, but an empty context is what precedes a text (the document start and the
        feedback), not a single BOS."""
        encoded = []
        for context, continuation in (r.args for r in requests):
            if context == "":
                conditioning = self._conditioning() or [self.prefix_token_id]
                encoded.append(((context, continuation), conditioning, self.tok_encode(continuation, False)))
            else:
                encoded.append(((context, continuation), *self._encode_pair(context, continuation)))
        return self._loglikelihood_tokens(encoded, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is greedy)`` per ``(key, context ids,
        continuation ids)``, longest first in batches (as the ``hf`` backend orders them)."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or not self.show_progress, desc="loglikelihood")
        for first in range(0, len(order), self.batch_size):
            batch = order[first:first + self.batch_size]
            # The last max_length tokens predict the continuation (hf's left truncation).
            rows = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):] for i in batch]
            width = max(len(r) for r in rows) - 1
            tokens = torch.full((len(rows), width + 1), self.tokenizer.eod, dtype=torch.long)
            for b, row in enumerate(rows):
                tokens[b, :len(row)] = torch.tensor(row)
            losses, greedy = self.model.token_scores(tokens[:, :-1], tokens[:, 1:])
            for b, i in enumerate(batch):
                n, end = len(requests[i][2]), len(rows[b]) - 1
                answer = (-float(losses[b, end - n:end].sum()), bool(greedy[b, end - n:end].all()))
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(len(batch))
        bar.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """A document's log-probability in disjoint windows of at most ``max_length`` tokens,
        each predicted with as much preceding context as fits (the ``hf`` backend's windows);
        the first window is preceded by the document start and the feedback."""
        conditioning = self._conditioning() or [self.prefix_token_id]
        windows, owners = [], []
        for index, (string,) in enumerate(r.args for r in requests):
            cut = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string, False), prefix_token=conditioning[-1],
                max_seq_len=self.max_length - len(conditioning) + 1, context_len=1)]
            if cut:  # (an empty document has no window, and log-probability 0)
                cut[0] = (conditioning[:-1] + cut[0][0], cut[0][1])
            windows += [(None, context, continuation) for context, continuation in cut]
            owners += [index] * len(cut)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # -- generation --------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each group of requests with the same generation settings decoded in batches; the
        text cut at the first stop string, as the ``hf`` backend cuts it."""
        eos = self.tokenizer.detokenize([self.eot_token_id])
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        results: list[Optional[str]] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or not self.show_progress, desc="generate_until")
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[indices[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if max_gen_toks >= self.max_length:
                raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a context in the model's "
                                 f"--seq-length {self.max_length}")
            temperature = kwargs.get("temperature")
            sampling = SamplingConfig(max_new_tokens=max_gen_toks, greedy=not kwargs.get("do_sample", False),
                                      temperature=1.0 if temperature is None else float(temperature),
                                      top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0),
                                      seed=self.seed)
            batch = [Request(self.tok_encode(requests[i].args[0])[-(self.max_length - max_gen_toks):], max_gen_toks,
                             tuple(until)) for i in indices]
            finished = [0]

            def progress(tokens: int, done: int) -> None:
                bar.update(done - finished[0])
                finished[0] = done

            completions = generate(self.model, self.tokenizer, batch, sampling, batch_size=self.batch_size,
                                   progress=progress)
            for i, completion in zip(indices, completions):
                text = postprocess_generated_text(self.tokenizer.detokenize(completion.ids), until, None)
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        bar.close()
        return results

    def get_model_info(self) -> dict:
        cfg = self.model.cfg
        return {"checkpoint": cfg.checkpoint.load, "iteration": self.model.iteration,
                "tensor_model_parallel_size": cfg.parallel.tensor_model_parallel_size,
                "pipeline_model_parallel_size": cfg.parallel.pipeline_model_parallel_size,
                "prefix_template": self.control.template,
                "feedback": self.tokenizer.detokenize(self.control.prefix) if self.control.prefix else None,
                "chat": self.control.config.chat}
