"""What the tests' fork server (tests/launch.py) imports once for the session: the heavy
imports of every entry point. Nothing here runs a torch op, starts a thread or opens a
process group: the server's children must start as clean as a fresh interpreter."""

import warnings

# megatron-core's import-time notices of missing optional kernels, silenced as in the runs'
# logs (megatron_ixt/runtime/logs.py): here they would be printed once, by the server.
for _message in (r"Transformer Engine and Apex are not installed\. Falling back to",
                 r"Apex is not installed\. Falling back to Torch Norm"):
    warnings.filterwarnings("ignore", message=_message, category=UserWarning)
_ours = list(warnings.filters[:2])

import torch  # noqa: E402,F401
import megatron.core  # noqa: E402,F401

for _module in ("megatron_ixt.training.loop", "megatron_ixt.evaluation.engine", "megatron_ixt.conversion.cli",
                "megatron_ixt.preprocess.pipeline", "megatron_ixt.feedback.cli", "transformers", "safetensors"):
    try:
        __import__(_module)
    except ImportError:  # a module renamed or an optional package missing: imported by the run itself
        pass

# The children set their own filters, as a fresh process does; the libraries' stay.
warnings.filters[:] = [f for f in warnings.filters if f not in _ours]
