"""DatasetWriter writes the bytes megatron-core's IndexedDatasetBuilder writes."""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_ixt.format.indexed_io import DatasetWriter, Shard, read_side_file, write_shard_bin


def random_documents(rng, n, dtype):
    """Documents as lists of sequences; some empty, some with several sequences."""
    docs = []
    for _ in range(n):
        k = rng.choice([0, 1, 1, 1, 3])
        docs.append([rng.integers(0, 60000 if dtype == np.uint16 else 100000, rng.integers(1, 50)) for _ in range(k)])
    return docs


def shard_of(docs, dtype, path):
    lengths = [len(s) for d in docs for s in d]
    tokens = np.concatenate([s for d in docs for s in d]).astype(dtype) if lengths else np.zeros(0, dtype)
    if tokens.size:
        write_shard_bin(path, tokens)
    side = np.array([[i % 7, i % 6] for i in range(len(lengths))], dtype=np.int32).reshape(-1, 2)
    return Shard(str(path) if tokens.size else None, int(tokens.size), np.array(lengths, np.int32),
                 np.array([len(d) for d in docs], np.int32), side)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_writer_matches_builder(tmp_path, dtype):
    rng = np.random.default_rng(0)
    batches = [random_documents(rng, n, dtype) for n in (40, 0, 1, 25, 60)]

    # Reference 1: every document through IndexedDatasetBuilder.add_document.
    reference = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)
    for docs in batches:
        for doc in docs:
            flat = np.concatenate(doc) if doc else np.zeros(0, dtype)
            reference.add_document(flat, [len(s) for s in doc])
    reference.finalize(str(tmp_path / "ref.idx"))

    # Reference 2: each batch its own dataset, merged with IndexedDatasetBuilder.add_index.
    merged = IndexedDatasetBuilder(str(tmp_path / "merged.bin"), dtype=dtype)
    for b, docs in enumerate(batches):
        part = IndexedDatasetBuilder(str(tmp_path / f"part{b}.bin"), dtype=dtype)
        for doc in docs:
            part.add_document(np.concatenate(doc) if doc else np.zeros(0, dtype), [len(s) for s in doc])
        part.finalize(str(tmp_path / f"part{b}.idx"))
        merged.add_index(str(tmp_path / f"part{b}"))
    merged.finalize(str(tmp_path / "merged.idx"))

    writer = DatasetWriter(str(tmp_path / "ours.bin"), str(tmp_path / "ours.idx"), str(tmp_path / "ours.ixt.npy"), dtype)
    sides = []
    for b, docs in enumerate(batches):
        shard = shard_of(docs, dtype, tmp_path / f"shard{b}.bin")
        sides.append(shard.side)
        writer.append(shard)
    writer.finalize()

    for suffix in (".bin", ".idx"):
        ours = (tmp_path / f"ours{suffix}").read_bytes()
        assert ours == (tmp_path / f"ref{suffix}").read_bytes()
        assert ours == (tmp_path / f"merged{suffix}").read_bytes()

    dataset = IndexedDataset(str(tmp_path / "ours"))
    assert len(dataset) == sum(len(d) for docs in batches for d in docs)
    assert len(dataset.document_indices) == sum(len(docs) for docs in batches) + 1
    side = read_side_file(str(tmp_path / "ours"))
    assert side.shape == (len(dataset), 2) and side.dtype == np.int32
    np.testing.assert_array_equal(side, np.concatenate(sides))


def test_dtype_table_is_megatron_cores():
    """indexed_io reproduces megatron-core's DType without importing it (fast start-up)."""
    from megatron.core.datasets.indexed_dataset import DType

    from megatron_ixt.format.indexed_io import DTYPE_CODES, dtype_code, token_dtype

    assert DTYPE_CODES == {getattr(np, d.name): d.value for d in DType}
    for numpy_type in DTYPE_CODES:
        assert dtype_code(numpy_type) == DType.code_from_dtype(numpy_type)
    for size in (None, 0, 4000, 65499, 65500, 65536, 10**6):
        assert token_dtype(size) == DType.optimal_dtype(size)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_append_dataset_matches_add_index_in_small_pieces(tmp_path, dtype, monkeypatch):
    """The merge path (finished datasets through memory maps, written piece by piece) gives
    IndexedDatasetBuilder.add_index's bytes; a tiny PIECE exercises every piece boundary."""
    import megatron_ixt.format.indexed_io as indexed_io

    monkeypatch.setattr(indexed_io, "PIECE", 7)
    rng = np.random.default_rng(1)
    batches = [random_documents(rng, n, dtype) for n in (30, 0, 1, 45)]
    reference = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)
    sides = []
    for b, docs in enumerate(batches):
        part = DatasetWriter(str(tmp_path / f"part{b}.bin"), str(tmp_path / f"part{b}.idx"),
                             str(tmp_path / f"part{b}.ixt.npy"), dtype)
        shard = shard_of(docs, dtype, tmp_path / f"shard{b}.bin")
        part.append(shard)
        part.finalize()
        sides.append(shard.side)
        reference.add_index(str(tmp_path / f"part{b}"))
    reference.finalize(str(tmp_path / "ref.idx"))

    writer = DatasetWriter(str(tmp_path / "ours.bin"), str(tmp_path / "ours.idx"), str(tmp_path / "ours.ixt.npy"), dtype)
    for b in range(len(batches)):
        writer.append_dataset(str(tmp_path / f"part{b}"))
    writer.finalize()
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()
    np.testing.assert_array_equal(read_side_file(str(tmp_path / "ours")), np.concatenate(sides))


def test_append_dataset_refuses_damaged_shards(tmp_path):
    from megatron_ixt.format.indexed_io import read_index

    rng = np.random.default_rng(2)
    writer = DatasetWriter(str(tmp_path / "a.bin"), str(tmp_path / "a.idx"), str(tmp_path / "a.ixt.npy"), np.uint16)
    writer.append(shard_of(random_documents(rng, 20, np.uint16), np.uint16, tmp_path / "s.bin"))
    writer.finalize()
    assert len(read_index(str(tmp_path / "a")).document_indices) == 21
    with open(tmp_path / "a.bin", "ab") as f:
        f.write(b"xx")  # one token too many
    with pytest.raises(ValueError, match=r"a\.bin: .* bytes, but its \.idx counts"):
        read_index(str(tmp_path / "a"))
    (tmp_path / "b.idx").write_bytes(b"not an index")
    (tmp_path / "b.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"b\.idx: not a megatron-core index"):
        read_index(str(tmp_path / "b"))
    good = DatasetWriter(str(tmp_path / "d.bin"), str(tmp_path / "d.idx"), str(tmp_path / "d.ixt.npy"), np.uint16)
    good.append(shard_of(random_documents(rng, 5, np.uint16), np.uint16, tmp_path / "t.bin"))
    good.finalize()
    other = DatasetWriter(str(tmp_path / "c.bin"), str(tmp_path / "c.idx"), str(tmp_path / "c.ixt.npy"), np.int32)
    with pytest.raises(ValueError, match="tokens are uint16, the merged dataset's int32"):
        other.append_dataset(str(tmp_path / "d"))
    other.close()


def test_metadata_has_one_reader_and_one_writer(tmp_path):
    """read_metadata: the file as written; None for a dataset without one (Megatron-LM's) only
    when asked; otherwise an InputError naming the file, for a missing or a corrupt one."""
    from megatron_ixt.format.errors import InputError
    from megatron_ixt.format.indexed_io import read_metadata, write_metadata

    prefix = str(tmp_path / "d_text_document")
    meta = {"format": "megatron_ixt.preprocess/1", "counts": {"documents": 3}, "text": "é"}
    write_metadata(prefix + ".meta.json", meta)
    assert read_metadata(prefix) == meta and read_metadata(prefix, missing_ok=True) == meta
    assert read_metadata(str(tmp_path / "none"), missing_ok=True) is None
    with pytest.raises(InputError, match=r"none\.meta\.json: no such file"):
        read_metadata(str(tmp_path / "none"))
    (tmp_path / "bad.meta.json").write_text('{"format": ')
    with pytest.raises(InputError, match=r"bad\.meta\.json: not valid JSON"):
        read_metadata(str(tmp_path / "bad"), missing_ok=True)
    (tmp_path / "list.meta.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"list\.meta\.json: expected a JSON object, got list"):
        read_metadata(str(tmp_path / "list"))


def test_staged_datasets_publish_complete_sets_or_nothing(tmp_path, monkeypatch):
    """preprocess.publish, the one publishing step of preprocessing and the merge: files are
    written in a hidden staging folder and renamed into place, .idx last; an error leaves
    nothing behind."""
    import os

    from megatron_ixt.preprocess.publish import PUBLISH_ORDER, StagedDatasets, dataset_prefix

    rng = np.random.default_rng(3)
    output_prefix = str(tmp_path / "out" / "corpus")
    prefixes = [dataset_prefix(output_prefix, key) for key in ("text", "code")]
    renamed = []
    real_replace = os.replace
    with StagedDatasets(output_prefix) as staged:
        assert os.path.basename(staged.folder).startswith(".corpus.")
        for prefix in prefixes:
            writer = staged.writer(prefix, np.uint16)
            writer.append(shard_of(random_documents(rng, 10, np.uint16), np.uint16, tmp_path / "s.bin"))
            writer.finalize()
            staged.write_metadata(prefix, {"json_key": prefix})
        assert not list((tmp_path / "out").glob("corpus*"))  # nothing visible before publishing
        monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(dst), real_replace(src, dst)))
        staged.publish(prefixes)
        monkeypatch.undo()
    assert renamed[-len(prefixes):] == [p + ".idx" for p in prefixes]  # every .idx after all the rest
    assert len(renamed) == len(prefixes) * (sum(map(len, PUBLISH_ORDER)) - 1)  # no roles file: not SFT data
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) + s for p in prefixes
                                                          for s in (".bin", ".idx", ".ixt.npy", ".meta.json"))
    assert len(IndexedDataset(prefixes[0])) > 0

    with pytest.raises(RuntimeError, match="disk full"):
        with StagedDatasets(str(tmp_path / "failed" / "corpus")) as staged:
            staged.write_metadata(dataset_prefix(str(tmp_path / "failed" / "corpus"), "text"), {})
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path / "failed") == []
