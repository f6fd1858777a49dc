"""megatron_ixt: Introspective Training on megatron-core."""
__version__ = "0.1.0"
