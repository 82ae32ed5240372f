import pyarrow as pa

from tamis_example_filters import MinLength, drop_short_lines


def table(texts):
    return pa.table({"id": [f"t/{i}" for i in range(len(texts))], "source": ["t"] * len(texts), "text": texts})


def test_min_length_drops_short_documents_with_their_length():
    result = MinLength({"min_chars": 10}).process_batch(table(["short", "long enough to keep"]))
    assert result.kept.column("text").to_pylist() == ["long enough to keep"]
    assert result.dropped.column("detail").to_pylist() == ["5 chars"]


def test_drop_short_lines_gives_one_reason_per_row():
    menu = "Home\nAbout\nContact\nNews"
    prose = "A sentence that runs well past the short line limit.\nAnd another one that does too."
    assert drop_short_lines(table([menu, prose])) == ["mostly_short_lines", None]
