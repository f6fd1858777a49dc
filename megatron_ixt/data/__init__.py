"""Data: the document format, prefix templates, tokenizers, preprocessing, the IXT dataset.

Import from the submodules (this package imports nothing itself, so that a light module
such as `megatron_ixt.data.errors` does not pull in megatron-core):

* `document` - the JSONL document format and its validator (`parse_document_line`);
* `levels` - quality levels 1..5 (`quality_level`, `QualityThresholds`);
* `prefixes` - feedback -> prefix text and ids (`render_prefix`, `prefix_token_ids`);
* `tokenizers` - `build_tokenizer` with Megatron-LM's type names;
* `indexed_io` - the preprocessed files (`read_side_file`, `read_metadata`);
* `preprocess` - the pipeline behind tools/preprocess_data.py;
* `merge` - merging preprocessed datasets (SLURM shards) in constant memory;
* `datasets`, `ixt_dataset` - megatron-core datasets over the preprocessed files (`packing`:
  their compiled index kernels).

See docs/data.md.
"""
