"""Tokenizers with Megatron-LM's type names, used alike by preprocessing, training,
inference and conversion.

* `base` - megatron-core's legacy tokenizer interface, without importing megatron-core;
* `build` - `build_tokenizer` and the four types (SentencePiece, Hugging Face, GPT-2 BPE, Null);
* `training` - `tools/train_tokenizer.py`: a lossless SentencePiece model with the delimiters.

This package imports nothing itself, so that `base` (the tools' `--help`) stays light.
"""
