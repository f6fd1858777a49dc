"""megatron-core GPTModel construction and FLOPs accounting."""
