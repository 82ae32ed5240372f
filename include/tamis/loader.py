"""A streaming, rank-aware PyTorch loader over a packed ``.bin``/``.idx`` pair.

Order of one epoch: a permutation of all sequences drawn from ``(seed, epoch)`` (the
same on every rank), rank ``r`` of ``W`` takes positions ``r, r+W, r+2W...`` of it,
so within an epoch every sequence goes to exactly one rank (ranks differ by at most
one sequence). Inside a rank, its stream is cut into blocks of ``batch_size``
sequences and DataLoader worker ``w`` of ``n`` yields blocks ``w, w+n, ...``. The
DataLoader collects batches from its workers round-robin, so with the same
``batch_size`` on the DataLoader the batches arrive in exactly the rank's order,
whatever the number of workers. That makes a position in the rank's stream a
complete resume point.

Each sample is ``{"input_ids": LongTensor[seq_len], "index": sequence number in the
binary, "position": position in this rank's epoch stream}``. Resume: save
``state_dict()`` (in-process iteration keeps it current; with worker processes call
``dataset.record(batch)`` on each consumed batch), and ``load_state_dict()`` it into
a fresh dataset: iteration continues at the next unseen sequence.

A release is opened by its version (:meth:`PackedSequenceDataset.from_release`): its token
binary is read from the hot copy when a verified one is ready (:mod:`tamis.preheat`), else
from the release store (the DVC remote: a local one is read in place, an object store's
objects are downloaded and verified first). A partial hot copy is never read.

This is the only tamis module that imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tamis import storage
from tamis.export import TokenBinary


class PackedSequenceDataset(IterableDataset):
    def __init__(
        self,
        prefix: str,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        batch_size: int = 1,
        epoch: int = 0,
    ):
        super().__init__()
        self.binary = TokenBinary(prefix)
        default_rank, default_world = _distributed_defaults()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.seed = seed
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.epoch = epoch
        self.offset = 0  # sequences of this rank's epoch stream already consumed
        self.release: dict[str, Any] | None = None  # version and where it was read from, when opened as a release

    @classmethod
    def from_release(
        cls, version: str, store: str, hot: str | None = None, cache: str | None = None, **kwargs: Any
    ) -> PackedSequenceDataset:
        """The packed sequences of release ``version``: from the verified hot copy under ``hot``
        when it is ready, else from ``store`` (the release's DVC remote). ``cache``: where an
        object store's files are downloaded (default: TAMIS_RELEASE_CACHE or the temporary folder)."""
        prefix, read_from = release_binary(version, store, hot, cache)
        dataset = cls(prefix, **kwargs)
        dataset.release = {"version": version, "read_from": read_from, "prefix": prefix}
        return dataset

    # -- order -----------------------------------------------------------------------

    def rank_order(self, epoch: int | None = None) -> np.ndarray:
        """Sequence numbers this rank sees in ``epoch``, in order."""
        n = len(self.binary)
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.binary)
        return n // self.world_size + (1 if self.rank < n % self.world_size else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = self.rank_order()
        start = self.offset
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        in_process = info is None
        positions = np.arange(start, order.size)
        # Blocks of batch_size positions after the resume point, dealt to workers in turn.
        block = (positions - start) // self.batch_size
        mine = positions[block % workers == worker]
        for position in mine:
            index = int(order[position])
            tokens = torch.from_numpy(self.binary[index].astype(np.int64))
            if in_process:
                self.offset = int(position) + 1
            yield {"input_ids": tokens, "index": index, "position": int(position)}

    # -- epochs and resume -------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (a new shuffle)."""
        self.epoch = epoch
        self.offset = 0

    def record(self, batch: dict[str, Any]) -> None:
        """Note a batch the training loop consumed (needed when workers run in other processes)."""
        positions = batch["position"]
        last = int(positions.max()) if isinstance(positions, torch.Tensor) else int(max(np.atleast_1d(positions)))
        self.offset = max(self.offset, last + 1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "sequences": len(self.binary),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mismatched = {
            k: (state[k], v)
            for k, v in (
                ("seed", self.seed),
                ("shuffle", self.shuffle),
                ("rank", self.rank),
                ("world_size", self.world_size),
                ("sequences", len(self.binary)),
            )
            if k in state and state[k] != v
        }
        if mismatched:
            raise ValueError(f"loader state does not match this dataset (saved, current): {mismatched}")
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])


def release_binary(version: str, store: str, hot: str | None = None, cache: str | None = None) -> tuple[str, str]:
    """(prefix of the release's .bin/.idx pair, "hot" or "store")."""
    from tamis.preheat import hot_copy
    from tamis.release import binary_prefix, store_object_url

    copy = hot_copy(hot, version) if hot else None
    if copy is not None:
        manifest = json.loads((copy / "release.json").read_text())
        return str(copy / binary_prefix(manifest)), "hot"
    manifest = storage.read_json(storage.join(store, "releases", version, "release.json"))
    prefix = binary_prefix(manifest)
    files = {f["path"]: f for f in manifest["contents"]["files"]}
    local = Path(cache or os.environ.get("TAMIS_RELEASE_CACHE") or Path(tempfile.gettempdir()) / "tamis-releases")
    target = local / version / prefix
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".idx", ".bin"):
        entry = files[prefix + suffix]
        path = Path(f"{target}{suffix}")
        if path.exists() and path.stat().st_size == entry["bytes"]:
            continue
        fs, source = storage.filesystem(store_object_url(store, entry["md5"]))
        if storage._is_local(fs):
            _link(Path(source), path)  # a local store is read in place: its objects never change
        else:
            _download(fs, source, path, entry)
    return str(target), "store"


def _link(source: Path, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    os.symlink(source, tmp)
    os.replace(tmp, path)


def _download(fs, source: str, path: Path, entry: dict[str, Any]) -> None:
    """Copy one object down, checking its sha256 before it takes its name."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    digest = hashlib.sha256()
    try:
        with fs.open(source, "rb") as src, open(tmp, "wb") as out:
            while block := src.read(8 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != entry["sha256"]:
            raise OSError(f"{source} has sha256 {digest.hexdigest()}, the release says {entry['sha256']}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _distributed_defaults() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
