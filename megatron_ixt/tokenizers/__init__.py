"""Tokenizers with Megatron-LM's type names, used alike by preprocessing, training,
inference and conversion.

* `base` - megatron-core's legacy tokenizer interface, without importing megatron-core;
* `ixt` - what every tokenizer here shares (the feedback delimiter ids, batched tokenization,
  identity) and the null tokenizer of mock data;
* `sentencepiece_model` - SentencePiece models; `bpe` - tokenizer.json and GPT-2 BPE;
  `tiktoken_model` - Megatron-LM's tiktoken vocabularies (TikTokenizer);
* `build` - `build_tokenizer` / `tokenizer_from_config`: a tokenizer by Megatron-LM type name;
* `chat` - chat templates and the SFT encoding of conversations;
* `training` - `tools/train_tokenizer.py`: a lossless SentencePiece model with the delimiters.

This package imports nothing itself, so that `base` (the tools' `--help`) stays light.
"""
