"""Typed configuration: dataclasses named after Megatron-LM's arguments, the command line
generated from them, YAML loading and validation."""
from megatron_ixt.config.cli import ConfigError, apply_overrides, config_to_yaml, load_yaml, parse_config
from megatron_ixt.config.schema import Config, TokenizerConfig
from megatron_ixt.config.validate import validate

__all__ = ["Config", "ConfigError", "apply_overrides", "config_to_yaml", "load_yaml", "parse_config", "TokenizerConfig", "validate"]
