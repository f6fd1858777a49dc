"""The online stage of IXT: sample under the best feedback, let the critics judge every
sample, train on the samples with the feedback they earned, and repeat.

    python tools/online_ixt.py --load ckpt/sft --chat --prompts problems.jsonl \
        --output-dir runs/online --rounds 3 --samples-per-prompt 4 --critic math \
        --temperature 0.8 --max-new-tokens 64 \
        --train-iters 20 --micro-batch-size 8 --global-batch-size 8 --lr 1e-4

Each round leaves DIR/round_N/ with the samples, the annotations, the dataset, the checkpoint
and summary.json (accepted share under the target feedback, score distribution, tokens, wall
time per stage); a killed run continues, at the next start, at the stage where it stopped.
--mode filter (rejection-sampling fine-tuning: the accepted samples only, without feedback)
and --mode plain (self-training on every sample, without feedback) are the baselines, with
the same samples and training steps. Flags the driver does not know go to pretrain_ixt.py (--seed included:
the sampling's is --sample-seed).

Exit codes: 0 done; 1 a bad prompt (named file:line: field, before any sampling) or a stage
that failed (rerun the same command to resume); 2 bad flags or a restart with other settings.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ixt.runtime.logs import setup_logging  # noqa: E402

setup_logging()

from megatron_ixt.config.cli import ConfigError  # noqa: E402
from megatron_ixt.format.errors import DataError  # noqa: E402
from megatron_ixt.online.config import parse_args  # noqa: E402
from megatron_ixt.online.driver import OnlineRun, StageFailed, summary_table  # noqa: E402


def main() -> int:
    args = parse_args(None, __doc__)
    try:
        summaries = OnlineRun(args).run()
    except DataError as error:
        print(f"online_ixt.py: error: {error}", file=sys.stderr)
        return 1
    except StageFailed as error:
        print(f"online_ixt.py: error: {error}; rerun the same command to resume", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, OSError) as error:
        print(f"online_ixt.py: error: {error}", file=sys.stderr)
        return 2
    if summaries:  # none after an array task (--shard)
        logging.getLogger("online_ixt").info("rounds:\n%s", summary_table(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
