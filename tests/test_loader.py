"""The PyTorch loader: rank/worker sharding, deterministic shuffle, exact resume."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader

from conftest import TEST_DATA, read_jsonl
from tamis import export
from tamis.loader import PackedSequenceDataset

SEQ_LEN = 64
BATCH = 4


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> tuple[str, list[list[int]]]:
    """A .bin/.idx of real text: BPE-tokenized speeches packed end to end into 64-token rows."""
    texts = [r["text"][:1500] for r in read_jsonl(TEST_DATA / "web_en/us_presidential_speeches.jsonl.gz", 12)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|eos|>"]
        ),
    )
    stream = [t for e in tokenizer.encode_batch(texts) for t in e.ids + [0]]
    rows = [stream[i : i + SEQ_LEN] for i in range(0, len(stream) - SEQ_LEN + 1, SEQ_LEN)]
    while len(rows) % 2 == 0 or len(rows) % 3 == 0:  # no world size divides it: ranks get uneven shares
        rows.pop()
    root = tmp_path_factory.mktemp("export")
    table = pa.table({"input_ids": pa.array(rows, pa.list_(pa.int32()))})
    export.write_megatron([table], str(root / "tokens"), np.uint16, str(root))
    return str(root / "tokens"), rows


def _epoch(prefix: str, world_size: int, workers: int, seed: int = 5, epoch: int = 0) -> list[list[int]]:
    """Sequence numbers each rank receives through a real DataLoader, in order."""
    seen = []
    for rank in range(world_size):
        dataset = PackedSequenceDataset(
            prefix, rank=rank, world_size=world_size, seed=seed, batch_size=BATCH, epoch=epoch
        )
        loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers)
        seen.append([i for batch in loader for i in batch["index"].tolist()])
    return seen


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_sequence_exactly_once_per_epoch(binary, world_size, workers):
    prefix, rows = binary
    seen = _epoch(prefix, world_size, workers)
    flat = [i for rank in seen for i in rank]
    assert sorted(flat) == list(range(len(rows)))
    assert max(map(len, seen)) - min(map(len, seen)) <= 1
    # The order a rank sees does not depend on how many workers read it.
    for rank, order in enumerate(seen):
        canonical = PackedSequenceDataset(prefix, rank=rank, world_size=world_size, seed=5).rank_order()
        assert order == canonical.tolist()


def test_samples_carry_the_packed_tokens(binary):
    prefix, rows = binary
    dataset = PackedSequenceDataset(prefix, seed=1)
    for sample in list(dataset)[:5]:
        assert sample["input_ids"].dtype == torch.int64
        assert sample["input_ids"].tolist() == rows[sample["index"]]


def test_shuffle_is_deterministic_by_seed_and_epoch(binary):
    prefix, rows = binary
    assert _epoch(prefix, 2, 0, seed=5, epoch=1) == _epoch(prefix, 2, 0, seed=5, epoch=1)
    assert _epoch(prefix, 1, 0, seed=5, epoch=1) != _epoch(prefix, 1, 0, seed=5, epoch=2)
    assert _epoch(prefix, 1, 0, seed=5) != _epoch(prefix, 1, 0, seed=6)
    unshuffled = PackedSequenceDataset(prefix, shuffle=False)
    assert [s["index"] for s in unshuffled] == list(range(len(rows)))


def test_set_epoch_restarts_with_a_new_order(binary):
    prefix, _ = binary
    dataset = PackedSequenceDataset(prefix, seed=2)
    first = [s["index"] for s in dataset]
    dataset.set_epoch(1)
    assert dataset.state_dict()["offset"] == 0
    second = [s["index"] for s in dataset]
    assert sorted(first) == sorted(second) and first != second


def test_exact_resume_in_process(binary):
    prefix, _ = binary
    full = _epoch(prefix, 2, 0)[1]
    dataset = PackedSequenceDataset(prefix, rank=1, world_size=2, seed=5, batch_size=BATCH)
    loader = iter(DataLoader(dataset, batch_size=BATCH, num_workers=0))
    before = [i for _ in range(3) for i in next(loader)["index"].tolist()]
    state = dataset.state_dict()
    assert state["offset"] == 3 * BATCH
    resumed = PackedSequenceDataset(prefix, rank=1, world_size=2, seed=5, batch_size=BATCH)
    resumed.load_state_dict(state)
    after = [i for batch in DataLoader(resumed, batch_size=BATCH, num_workers=0) for i in batch["index"].tolist()]
    assert before + after == full


def test_exact_resume_with_worker_processes(binary):
    prefix, _ = binary
    full = _epoch(prefix, 3, 2)[0]
    dataset = PackedSequenceDataset(prefix, rank=0, world_size=3, seed=5, batch_size=BATCH)
    before = []
    for step, batch in enumerate(DataLoader(dataset, batch_size=BATCH, num_workers=2)):
        dataset.record(batch)
        before += batch["index"].tolist()
        if step == 2:
            break
    state = dataset.state_dict()
    assert state["offset"] == len(before) == 3 * BATCH
    resumed = PackedSequenceDataset(prefix, rank=0, world_size=3, seed=5, batch_size=BATCH)
    resumed.load_state_dict(state)
    after = [i for batch in DataLoader(resumed, batch_size=BATCH, num_workers=2) for i in batch["index"].tolist()]
    assert before + after == full


def test_state_from_another_layout_is_refused(binary):
    prefix, _ = binary
    state = PackedSequenceDataset(prefix, rank=0, world_size=2, seed=5).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        PackedSequenceDataset(prefix, rank=0, world_size=3, seed=5).load_state_dict(state)


def test_rank_outside_world_is_refused(binary):
    with pytest.raises(ValueError, match="rank 2"):
        PackedSequenceDataset(binary[0], rank=2, world_size=2)


def test_the_rest_of_tamis_imports_without_torch():
    code = (
        "import sys, tamis.export, tamis.lookup, tamis.stages.mix, tamis.stages.index; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
