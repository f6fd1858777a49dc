"""Safetensors, one tensor at a time: the reader and writer of the streaming conversion.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the bytes. The `safetensors` library reads a file
by memory-mapping it; every tensor read maps its pages into the process, and converting a
whole model that way keeps it all resident until the file is closed (its `save_file` builds
the whole file in memory first). Here each tensor is read with one `pread` into its own
buffer and freed by its last user, and written straight from the tensor, so a conversion
holds the model it builds and the tensor in hand, never a copy of the files.

`HFWeights` reads a Hugging Face folder (`model.safetensors`, or shards with
`model.safetensors.index.json`); `write_sharded` writes one the same way, with the index when
there is more than one shard. Files written here load with `safetensors` and transformers.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable

import torch

from megatron_ixt.conversion import ConversionError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_header(path: str) -> tuple[dict, int]:
    """(tensor entries by name, offset of the data) of one safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConversionError(f"{path}: not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 1024 * 1024:
            raise ConversionError(f"{path}: not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except ValueError as error:
            raise ConversionError(f"{path}: not a safetensors file (header: {error})") from None
    header.pop("__metadata__", None)
    return header, 8 + length


class HFWeights:
    """The tensors of a Hugging Face checkpoint folder, read one at a time (`get`)."""

    def __init__(self, folder: str) -> None:
        index = os.path.join(folder, INDEX_FILE)
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(os.path.join(folder, SINGLE_FILE)):
            files = [SINGLE_FILE]
        else:
            raise ConversionError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} (PyTorch .bin checkpoints: load "
                                  "and save_pretrained them with safetensors first)")
        self.entries: dict[str, tuple[str, dict, int]] = {}
        for name in files:
            path = os.path.join(folder, name)
            header, start = read_header(path)
            for key, entry in header.items():
                self.entries[key] = (path, entry, start)
        self.nbytes = sum(os.path.getsize(os.path.join(folder, name)) for name in files)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def keys(self):
        return self.entries.keys()

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.entries[name][1]["dtype"]]

    def shape(self, name: str) -> list[int]:
        return list(self.entries[name][1]["shape"])

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name``, in its stored dtype, in a buffer of its own."""
        if name not in self.entries:
            raise ConversionError(f"the checkpoint has no tensor {name!r}")
        path, entry, start = self.entries[name]
        begin, end = entry["data_offsets"]
        buffer = bytearray(end - begin)
        with open(path, "rb") as f:
            f.seek(start + begin)
            if f.readinto(buffer) != len(buffer):
                raise ConversionError(f"{path}: truncated (tensor {name!r})")
        if not buffer:
            return torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
        return torch.frombuffer(buffer, dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])


def _nbytes(shape, dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def _write_file(path: str, items: list[tuple[str, list, torch.dtype, Callable[[], torch.Tensor]]], progress) -> None:
    header, offset = {}, 0
    for name, shape, dtype, _ in items:
        size = _nbytes(shape, dtype)
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the library writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype, produce in items:
            tensor = produce().to(dtype).contiguous()
            if list(tensor.shape) != list(shape):
                raise ConversionError(f"{name}: produced shape {list(tensor.shape)}, announced {list(shape)}")
            f.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            progress.update(nbytes=tensor.numel() * tensor.element_size())
            del tensor


def write_sharded(folder: str, items: Iterable[tuple[str, list, torch.dtype, Callable[[], torch.Tensor]]],
                  max_shard_bytes: int = 5 * 1024 ** 3) -> list[str]:
    """Write ``(name, shape, dtype, produce)`` items as Hugging Face does: ``model.safetensors``,
    or ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_bytes`` (a larger
    tensor gets a shard of its own) with ``model.safetensors.index.json``. ``produce`` is
    called once per tensor, when its bytes are written. Returns the files written."""
    shards: list[list] = [[]]
    size = 0
    total = 0
    for item in items:
        nbytes = _nbytes(item[1], item[2])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
        total += nbytes
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    from megatron_ixt.runtime.progress import Progress

    progress = Progress("Wrote", total=sum(len(shard) for shard in shards), every_s=10.0, show_bytes=True, unit="tensors")
    for name, shard in zip(names, shards):
        _write_file(os.path.join(folder, name), shard, progress)
    progress.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {item[0]: name for name, shard in zip(names, shards) for item in shard}}
        with open(os.path.join(folder, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)
        names.append(INDEX_FILE)
    return names

