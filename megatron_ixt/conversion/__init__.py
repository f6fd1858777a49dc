"""Checkpoints to and from Hugging Face (`tools/convert_checkpoint.py`).

* `llama` - the mapping between megatron-core's GPT (this project's model) and a
  Hugging Face Llama: configuration, weight names and layouts, and the settings that have no
  exact Llama equivalent (refused, by name).
* `hf_tokenizer` - the tokenizer files of an exported model (`tokenizer.json` with the
  feedback delimiters as special tokens, `tokenizer_config.json`).
* `export` / `import_hf` - the two directions, run by `tools/convert_checkpoint.py`.
"""


class ConversionError(Exception):
    """A checkpoint, model or tokenizer that cannot be converted; the message says why."""
