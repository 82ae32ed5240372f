"""Source readers and listing: every line, record and entry is read or accounted for."""

from __future__ import annotations

import io
import random

import pytest
from tamis.sources.jsonl import HEAD_BYTES, Block, LineBlocks, LongLine, given_id


@pytest.mark.parametrize("seed", range(6))
def test_line_blocks_give_back_every_line_once_with_its_number_whatever_the_block_size(seed):
    rng = random.Random(seed)
    lines = [b"x" * rng.choice([0, 1, 5, 40, 90, 300]) for _ in range(200)]
    data = b"\n".join(lines) + (b"\n" if seed % 2 else b"")  # with and without a final newline
    max_line = 64

    pieces = list(LineBlocks(io.BytesIO(data), block_bytes=rng.choice([1, 7, 64, 100, 1000]), max_line_bytes=max_line))

    seen = {}
    for piece in pieces:
        if isinstance(piece, LongLine):
            seen[piece.line] = ("long", piece.size)
        else:
            assert isinstance(piece, Block) and piece.data.endswith(b"\n")
            assert piece.lines == piece.data.count(b"\n")
            for k, line in enumerate(piece.data.split(b"\n")[:-1]):
                seen[piece.first_line + k] = ("kept", line)
    expected = {k + 1: ("long", len(line)) if len(line) > max_line else ("kept", line) for k, line in enumerate(lines)}
    assert seen == expected


def test_a_long_line_comes_out_as_its_size_and_head_while_it_streams_past():
    class Stream(io.RawIOBase):
        """Hands out a 100 MiB line, then a short one, 1 MiB at a time."""

        def __init__(self):
            self.left = 100

        def read(self, n=-1):
            self.left -= 1
            if self.left >= 0:
                return b"y" * (1 << 20)
            return b"\nshort\n" if self.left == -1 else b""

    pieces = list(LineBlocks(Stream(), block_bytes=1 << 20, max_line_bytes=4 << 20))

    assert [type(p) for p in pieces] == [LongLine, Block]
    assert (pieces[0].line, pieces[0].size, len(pieces[0].head)) == (1, 100 << 20, HEAD_BYTES)
    assert (pieces[1].first_line, pieces[1].data) == (2, b"short\n")


def test_the_id_of_a_cut_line_is_read_from_its_top_level_only():
    assert given_id(b'{"id": "a1", "text": "word word wo', "id") == "a1"
    assert given_id(b'{"meta": {"id": "nested"}, "id": 7, "text": "wo', "id") == "7"
    assert given_id(b'{"text": "word word wo', "id") is None
    assert given_id(b'{"text": "short", "id": "after-the-text"}', "id") == "after-the-text"
    assert given_id(b"not json at all", "id") is None
    assert given_id(b'{"id": "a1"}', None) is None
