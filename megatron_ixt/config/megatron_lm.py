"""Megatron-LM's command line, as far as this trainer meets it.

Users come with Megatron-LM launch scripts. Every flag of Megatron-LM at core_v0.16.1 falls in
one of three kinds here:

- implemented: the config tree has a field of the same name (``config/schema.py``);
- accepted: what the flag asks for happens here anyway, so it is taken and ignored, and
  ``--help`` says why (:data:`ACCEPTED`);
- refused: the flag names behaviour this trainer does not have. The refusal is one line that
  names every such flag of the command and why (:func:`unsupported_flags_error`), instead of
  argparse's "unrecognized arguments".

Which flags Megatron-LM has is generated from its own parser, not typed by hand:
``megatron_lm_flags.json`` beside this module holds each ``--flag`` of
``megatron/training/arguments.py`` with its argument group. Regenerate it from a Megatron-LM
checkout (the tarball in ``shared/reference/upstream``, extracted) with::

    python -m megatron_ixt.config.megatron_lm --upstream Megatron-LM-core_v0.16.1
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from typing import Sequence

FLAGS_FILE = os.path.join(os.path.dirname(__file__), "megatron_lm_flags.json")
MEGATRON_LM_VERSION = "core_v0.16.1"

ACCEPTED = {
    "--use-mcore-models": "Accepted for Megatron-LM's scripts: this project's models are megatron-core models "
                          "(Megatron-LM's legacy models do not exist here), so the flag changes nothing.",
    "--no-create-attention-mask-in-dataloader": "Accepted for Megatron-LM's scripts: this project never builds "
                                                "the [s, s] attention mask in the data loader (causal attention "
                                                "needs none; document masks are built on the device from the "
                                                "tokens), so the flag changes nothing.",
}
"""Flags whose behaviour happens here anyway: flag -> the ``--help`` text saying so."""

# Why a refused flag cannot act here, by the Megatron-LM argument group it belongs to. A group
# not named here gets the generic reason.
GROUP_REASONS = {
    "moe": "mixture-of-experts layers; this project trains dense GPT models",
    "mla": "multi-latent attention; this project's attention is multi-head/grouped-query",
    "experimental_attention_variant": "an experimental attention variant megatron_ixt's models do not have",
    "heterogeneous architecture": "heterogeneous layer configurations; every layer here has the same shape",
    "vision": "vision models; this project trains GPT language models",
    "biencoder": "the BERT/retrieval biencoder; this project trains GPT language models",
    "rl": "Megatron-LM's reinforcement-learning loop; this trainer has none",
    "inference": "Megatron-LM's inference engine and server; generation here is tools/generate.py",
    "one logger": "NVIDIA's One Logger telemetry service",
    "ft_package": "NVIDIA's fault-tolerance package; resume here is --save/--load with preemption signals",
    "In-process restart": "NVIDIA Resiliency Extension's in-process restart; resume here is --save/--load",
    "straggler": "NVIDIA's straggler detector",
    "workload inspector": "NVIDIA's workload inspector server",
    "msc": "the Multi-Storage Client; checkpoints and data here are local or shared file systems",
    "rerun engine": "Megatron-LM's rerun state machine; non-finite steps are skipped here (--skip-nan-iterations)",
    "autoresume": "ADLR's autoresume service; resume here is --save/--load with preemption signals",
}


# The same by flag prefix, checked first: many of these flags sit in Megatron-LM's big
# "transformer configuration" group, generated from megatron-core's TransformerConfig.
PREFIX_REASONS = {
    ("--moe-", "--expert-", "--num-experts", "--overlap-moe-"): GROUP_REASONS["moe"],
    ("--mtp-",): "multi-token prediction heads; this project's GPT has one output layer",
    ("--mamba-", "--hybrid-", "--is-hybrid-model", "--linear-"): "Mamba / hybrid layers; this project trains transformers",
    ("--multi-latent-attention", "--q-lora-rank", "--kv-lora-rank", "--dsa-"): GROUP_REASONS["mla"],
    ("--fp4",): "FP4 training; precision here is fp32, --bf16, --fp16 or FP8 (--fp8-format)",
    ("--tp-comm-", "--disable-tp-comm-", "--no-tp-comm-"): "Transformer Engine's userbuffer overlap of "
                                                            "tensor-parallel communication, not wired here",
    ("--cuda-graph", "--enable-cuda-graph", "--external-cuda-graph"): "CUDA graphs, not wired here",
    ("--inference-",): GROUP_REASONS["inference"],
    ("--rl-", "--grpo-", "--langrl-"): GROUP_REASONS["rl"],
    ("--fim-",): "fill-in-the-middle data; this project's data is feedback-annotated documents",
    ("--dino-",): GROUP_REASONS["vision"],
    ("--muon",): "the Muon optimizer; --optimizer here is adam or sgd",
    ("--inprocess-",): GROUP_REASONS["In-process restart"],
    ("--use-legacy-models",): "Megatron-LM's legacy models; this project has megatron-core models only",
}


def why_unsupported(flag: str) -> str:
    """Why Megatron-LM's ``flag`` cannot act here (by prefix, then by its argument group)."""
    for prefixes, why in PREFIX_REASONS.items():
        if flag.startswith(prefixes):
            return why
    group = megatron_lm_flags()[flag]["group"]
    return GROUP_REASONS.get(group) or f"one of Megatron-LM's '{group}' options that megatron_ixt does not implement"


@functools.lru_cache(maxsize=1)
def megatron_lm_flags() -> dict[str, dict]:
    """``--flag -> {"group": argument group title, "nargs": argparse nargs}`` of Megatron-LM."""
    with open(FLAGS_FILE) as f:
        return json.load(f)["flags"]


def add_accepted_flags(parser: argparse.ArgumentParser) -> None:
    """The :data:`ACCEPTED` flags, as switches that set nothing in the configuration."""
    group = parser.add_argument_group("accepted from Megatron-LM (no effect here)")
    for flag, help in ACCEPTED.items():
        group.add_argument(flag, dest="accepted_" + flag[2:].replace("-", "_"), action="store_true", help=help)


def unsupported_flags_error(extras: Sequence[str]) -> str:
    """The one-line error for the arguments argparse did not recognise: each Megatron-LM flag
    among them with why it cannot act here, then anything that is no flag of either."""
    known = megatron_lm_flags()
    flags = [a.split("=", 1)[0] for a in extras if a.startswith("--")]
    theirs = [f for f in flags if f in known]
    parts = []
    if theirs:
        reasons = [f"{flag} ({why_unsupported(flag)})" for flag in dict.fromkeys(theirs)]
        parts.append(f"Megatron-LM {MEGATRON_LM_VERSION} flags not supported by megatron_ixt: " + "; ".join(reasons))
    others, refused_values = [], False
    for arg in extras:  # a refused flag's values are not arguments of their own
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            refused_values = flag in known and known[flag]["nargs"] != 0 and "=" not in arg
            if flag not in known:
                others.append(arg)
        elif not refused_values:
            others.append(arg)
    if others:
        parts.append("unrecognized arguments: " + " ".join(others) + " (flags of neither megatron_ixt nor Megatron-LM)")
    return ". ".join(parts)


def generate_flag_table(upstream: str) -> dict:
    """Every ``--flag`` of Megatron-LM's parser in the checkout ``upstream``, built by its own
    ``add_megatron_arguments``. Needs megatron-core importable (the checkout's ``megatron/core``
    is put first on the path)."""
    import sys
    from unittest import mock

    sys.path.insert(0, upstream)
    # Imported by megatron.training's package for a CUDA-only feature; it needs triton.
    sys.modules.setdefault("megatron.core.transformer.custom_layers.batch_invariant_kernels", mock.MagicMock())
    from megatron.training.arguments import add_megatron_arguments

    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    flags = {}
    for group in parser._action_groups:
        for action in group._group_actions:
            for option in action.option_strings:
                if option.startswith("--"):
                    flags[option] = {"group": group.title, "nargs": action.nargs}
    return {"source": f"NVIDIA/Megatron-LM {MEGATRON_LM_VERSION}, megatron/training/arguments.py",
            "flags": dict(sorted(flags.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate megatron_lm_flags.json from a Megatron-LM checkout.")
    parser.add_argument("--upstream", required=True, help="Megatron-LM source tree (core_v0.16.1).")
    parser.add_argument("--output", default=FLAGS_FILE)
    args = parser.parse_args()
    table = generate_flag_table(os.path.abspath(args.upstream))
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:  # one flag a line: diffs of a regeneration stay readable
        f.write('{"source": %s,\n "flags": {\n' % json.dumps(table["source"]))
        f.write(",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in table["flags"].items()))
        f.write("\n }\n}\n")
    os.replace(tmp, args.output)
    print(f"{len(table['flags'])} flags -> {args.output}")


if __name__ == "__main__":
    main()
