"""Tests of megatron_ixt.data: document format, prefixes, tokenizers, preprocessing."""
