"""Checkpoints: megatron-core ``dist_checkpointing`` (``torch_dist``) in Megatron-LM's layout.

- ``files``: names and paths, the ``latest`` tracker, the atomic steps of a save and the
  repair of an interrupted one (no torch needed to read a folder);
- ``contents``: what a checkpoint holds (model chunks' sharded state, RNG states, the
  common entries), for the writer, the reader and the importer alike;
- ``save``: the ``Saver`` (every rank writes, rank 0 publishes) and the lock of ``--save``;
- ``load``: the one opener (``open_checkpoint``) and the checks of a resumed run;
- ``compat``: checkpoints written by Megatron-LM.

Preemption signals ("save, then exit") are ``runtime.lifecycle``'s. Nothing is imported
here: ``files`` serves tools whose ``--help`` must not import torch.
"""
