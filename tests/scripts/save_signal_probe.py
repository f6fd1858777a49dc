"""Run pretrain_ixt.py in this process and record, during its checkpoint saves, how every
helper process it started treats the preemption signals (test helper of
tests/checkpoint/test_save_signals.py).

    python tests/scripts/save_signal_probe.py OUT.json -- PRETRAIN_FLAGS...

Each checkpoint writer megatron-core forks records its own ``/proc/self/status`` (its
``write_preloaded_data`` is wrapped; the fork carries the wrapper); a thread records every
other child of this process (the results-queue Manager megatron-core spawns in the first
save, the DataLoader workers) while the saves run. OUT.json lists them with ``SigBlk`` and
``SigIgn`` (hexadecimal masks, bit ``n - 1`` for signal ``n``).
"""

import json
import os
import sys
import threading
import time

from megatron.core.dist_checkpointing.strategies import filesystem_async

import pretrain_ixt
from megatron_ixt.checkpoint import save as checkpoint_save

FIELDS = ("Name", "SigBlk", "SigIgn")


def status(pid) -> dict:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {k: fields[k].strip() for k in FIELDS}


def main() -> int:
    out, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    writers_file = out + ".writers"
    original_write = filesystem_async.FileSystemWriterAsync.write_preloaded_data

    def write(*args, **kwargs):  # runs in each forked writer process
        with open(writers_file, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "kind": "writer", **status("self")}) + "\n")
        return original_write(*args, **kwargs)

    filesystem_async.FileSystemWriterAsync.write_preloaded_data = staticmethod(write)
    children: dict = {}
    saving = threading.Event()

    def watch() -> None:
        import psutil

        me = psutil.Process()
        while True:
            saving.wait()
            for child in me.children(recursive=True):
                try:
                    command = " ".join(child.cmdline())
                    kind = "spawned" if "spawn_main" in command or "resource_tracker" in command else "forked"
                    children.setdefault(child.pid, {"pid": child.pid, "kind": kind, **status(child.pid)})
                except (OSError, psutil.Error):
                    pass  # gone meanwhile
            time.sleep(0.002)

    threading.Thread(target=watch, daemon=True).start()
    original_save = checkpoint_save.Saver.save

    def save(self, *args, **kwargs):
        saving.set()
        try:
            return original_save(self, *args, **kwargs)
        finally:
            time.sleep(0.05)  # the watcher's last look
            saving.clear()

    checkpoint_save.Saver.save = save
    code = pretrain_ixt.main(argv)
    writers = [json.loads(line) for line in open(writers_file)] if os.path.exists(writers_file) else []
    with open(out, "w") as f:
        json.dump({"exit": code, "helpers": writers + list(children.values())}, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
