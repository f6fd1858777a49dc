"""Checkpoints to and from Hugging Face (`tools/convert_checkpoint.py`).

* `families` - Hugging Face configurations (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3) to and from
  this project's model settings, and what has no exact equivalent (refused, by name).
* `llama` - the weights: names and layouts between megatron-core's GPT and the Llama layout
  the four families share, one tensor at a time.
* `safetensors_io` - reading and writing safetensors a tensor at a time (sharded, indexed).
* `hf_tokenizer` - the tokenizer files of an exported model (`tokenizer.json` with the
  feedback delimiters as special tokens, `tokenizer_config.json`).
* `export` / `import_hf` - the two directions, run by `tools/convert_checkpoint.py`.
"""


class ConversionError(Exception):
    """A checkpoint, model or tokenizer that cannot be converted; the message says why."""
