"""tamis: turns raw text sources into training-ready LLM data."""

import os

# Arrow allocates from jemalloc unless told otherwise: it hands a batch's freed columns back
# sooner than the wheel's default mimalloc, so a stage worker's peak RSS is 20-45 MB lower
# at the same speed (benchmarks/batch_stage_memory.py). Arrow reads this when it is first
# imported, which in a tamis process (the CLI, a pod, a pool worker) comes after this.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

__version__ = "0.1.0"
