"""The online stage (``tools/online_ixt.py``): rounds of sampling under the best feedback,
judging by the critics, and training on the samples with the feedback they earned, with
rejection-sampling fine-tuning and self-training as baselines from the same driver.

``tasks``: prompts, samples, verdicts and what each mode trains on; ``config``: the flags;
``driver``: the rounds, their stages and their summaries.
"""
