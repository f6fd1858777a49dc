"""Runs pretrain_ixt.py's main in this process and records, for tests/training/test_operations_flags.py,
every garbage collection (the steps done when it started, its generation, whether the automatic
collector was on), whether the automatic collector was on at each step and after the run, the
calls that release unused CUDA memory (steps done, level), the W&B runs it started, and the child
processes left, into OUT.json.RANK.

    torchrun --nproc-per-node N tests/scripts/operations_probe.py OUT.json [pretrain_ixt.py flags...]
"""

import gc
import json
import os
import sys

import psutil
import wandb

import pretrain_ixt
from megatron_ixt.training import hooks, loop, step

steps = 0
collections = []
wandb_inits = []
automatic_at_steps = []
memory_releases = []


def counting_train_step(*args, **kwargs):
    global steps
    automatic_at_steps.append(gc.isenabled())
    result = real_train_step(*args, **kwargs)
    steps += 1
    return result


def on_gc(phase, info):
    if phase == "start":
        collections.append({"step": steps, "generation": info["generation"], "automatic_on": gc.isenabled()})


def counting_wandb_init(*args, **kwargs):
    wandb_inits.append(kwargs.get("mode"))
    return real_wandb_init(*args, **kwargs)


def recording_empty_unused_memory(cfg, level):
    memory_releases.append((steps, level))
    real_empty_unused_memory(cfg, level)


real_train_step, real_wandb_init, real_empty_unused_memory = loop.train_step, wandb.init, hooks.empty_unused_memory
wandb.init = counting_wandb_init
# Both callers: the step after each forward-backward, the hooks after each step.
step.empty_unused_memory = hooks.empty_unused_memory = recording_empty_unused_memory
loop.train_step = counting_train_step
gc.callbacks.append(on_gc)
status = pretrain_ixt.main(sys.argv[2:])
gc.callbacks.remove(on_gc)
children = psutil.Process().children(recursive=True)
_, alive = psutil.wait_procs(children, timeout=5)
with open(f"{sys.argv[1]}.{os.environ.get('RANK', 0)}", "w") as f:
    json.dump({"status": status, "pid": os.getpid(), "collections": collections,
               "automatic_at_steps": automatic_at_steps, "memory_releases": memory_releases,
               "automatic_after": gc.isenabled(),
               "wandb_inits": wandb_inits, "children_left": [p.name() for p in alive]}, f)
sys.exit(status)
