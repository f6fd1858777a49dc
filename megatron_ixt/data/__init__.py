"""What training reads: megatron-core datasets over the preprocessed files, packed and batched.

The pipeline, in order: `datasets` (blend the `--data-path` prefixes through megatron-core's
`BlendedMegatronDatasetBuilder`) -> `ixt_dataset` (IXT samples: prefix and document ids, the
loss mask, prefix dropout) -> `packing` (its compiled index kernels) -> `loader` (the
DataLoader, broadcast across tensor-parallel ranks) -> `batch` (the typed `Batch`).

The document format lives in `megatron_ixt.format`, tokenizers in `megatron_ixt.tokenizers`,
and writing datasets in `megatron_ixt.preprocess`. See docs/data.md.
"""
