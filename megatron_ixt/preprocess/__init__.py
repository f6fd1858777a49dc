"""Preprocessing: feedback-annotated JSONL -> Megatron indexed datasets.

* `config` - `PreprocessConfig`, the flags of tools/preprocess_data.py;
* `encode` - one line batch -> token ids and prefix records (runs in the worker processes);
* `encode_sft` - the same for conversations (``--sft``), on the chat template;
* `workers` - the worker processes' side of the pool: one encoder of either kind each;
* `pipeline` - the ordered, parallel pipeline behind tools/preprocess_data.py;
* `merge` - merging finished datasets (SLURM shards) in constant memory;
* `publish` - the output staged next to its target and renamed into place when complete,
  for the pipeline and the merge alike.

See docs/data.md.
"""
