"""Pretrain a GPT model with Introspective Training (feedback-conditioned) on megatron-core.

    torchrun --nproc-per-node 2 pretrain_ixt.py --config examples/configs/tiny.yaml \
        --mock-data --tensor-model-parallel-size 2 --train-iters 20
"""

import sys

from megatron_ixt.runtime.logs import setup_logging

setup_logging()

import logging  # noqa: E402

from megatron_ixt.config import ConfigError, parse_config  # noqa: E402
from megatron_ixt.config.validate import check_given  # noqa: E402
from megatron_ixt.format.errors import DataError  # noqa: E402
from megatron_ixt.runtime.distributed import destroy_distributed, initialize_distributed, resolve_launch_env  # noqa: E402
from megatron_ixt.runtime.kernels import DeviceFacts, validate_for_this_machine  # noqa: E402
from megatron_ixt.runtime.lifecycle import watch_launcher  # noqa: E402

logger = logging.getLogger("megatron_ixt")


def main(argv=None) -> int:
    watch_launcher()  # under torchrun: stop when the launcher dies, not train on as an orphan
    try:
        cfg, ns = parse_config(argv)
        world_size = resolve_launch_env()["world_size"]
        facts = None  # this machine's
        if ns.dry_run:  # check the job for the hardware it will run on, not for this machine
            from megatron_ixt.training.dry_run import target_device

            target = target_device(cfg, ns.dry_run_device, DeviceFacts.detect())
            facts = target.facts
        elif ns.dry_run_device:
            raise ConfigError("--dry-run-device names the GPU a --dry-run checks the job for; add --dry-run")
        check_given(cfg, ns.given_fields)  # first: it reads what the given flags imply (the tokenizer type)
        plan = validate_for_this_machine(cfg, world_size, facts)
        source = "set by --document-start or --config"
        if cfg.model.document_start is None:
            # A model keeps its document start through continued training (an imported model's
            # BOS or nothing, see --document-start); one trained from scratch here follows EODs.
            from megatron_ixt.checkpoint.load import recorded_document_start

            recorded = recorded_document_start(cfg.checkpoint.load)
            cfg.model.document_start = recorded or "eod"
            source = "recorded in the --load checkpoint" if recorded else "a model trained from scratch"
        if not cfg.data.sft:
            from megatron_ixt.data.datasets import check_document_start

            check_document_start(cfg, source)  # the data must start documents as the model does
        if ns.dry_run:
            from megatron_ixt.training.dry_run import report

            return report(cfg, plan, target, world_size)
    except ConfigError as e:
        print(f"pretrain_ixt.py: error: {e}", file=sys.stderr)
        return ConfigError.exit_code

    from megatron_ixt.checkpoint.save import lock_save_folder
    from megatron_ixt.data.datasets import dataset_record
    from megatron_ixt.runtime.lifecycle import EXIT_CODE_PREEMPTED
    from megatron_ixt.tokenizers.build import tokenizer_from_config
    from megatron_ixt.training.context import RunContext
    from megatron_ixt.training.loop import NonFiniteLossError, pretrain

    logger.info("megatron_ixt: %s, %s", "bf16" if cfg.model.bf16 else "fp16" if cfg.model.fp16 else "fp32", plan.describe())
    layout = initialize_distributed(cfg, plan)
    try:
        lock_save_folder(cfg)  # before anything writes to --save
        # Everything below gets the run's one layout, plan, tokenizer and dataset record.
        run = RunContext(cfg, layout, plan, tokenizer=tokenizer_from_config(cfg.tokenizer), dataset=dataset_record(cfg))
        state = pretrain(run)
    except ConfigError as e:
        print(f"pretrain_ixt.py: error: {e}", file=sys.stderr)
        return ConfigError.exit_code
    except (DataError, NonFiniteLossError) as e:
        print(f"pretrain_ixt.py: error: {e}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()
    return EXIT_CODE_PREEMPTED if state.history.get("exit_reason") == "signal" else 0


if __name__ == "__main__":
    sys.exit(main())
