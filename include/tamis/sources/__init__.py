"""Where raw documents are read.

:func:`list_source` lists a source's files by date partition, and every entry it cannot
read with the reason (a FIFO, a dangling symlink...). Each reader turns one file into :class:`~tamis.sources.chunk.Chunk` s: the records in file
order (text, id, URL, line) and the input it rejected, each with its line and reason, so a
bad line, record, row group or file never stops a stage. Readers of other kinds of source
(git, http) belong here too.
"""

from tamis.sources.chunk import Chunk, Fields, reject
from tamis.sources.files import Listing, SkippedEntry, SourceFile, list_source
from tamis.sources.jsonl import read_jsonl
from tamis.sources.parquet import read_parquet
from tamis.sources.text import read_text
from tamis.sources.warc import read_warc

__all__ = [
    "Chunk",
    "Fields",
    "Listing",
    "SkippedEntry",
    "SourceFile",
    "list_source",
    "read_jsonl",
    "read_parquet",
    "read_text",
    "read_warc",
    "reject",
]
