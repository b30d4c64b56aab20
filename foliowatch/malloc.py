"""glibc's allocator settings for the long-running processes (the agent, the pipeline).

glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB on 64-bit),
so that after the first large free, later large blocks come from the arenas instead of
their own mappings, and stay resident after they are freed: the heap only gives memory
back from its top. Fixing the threshold at glibc's initial 128 KiB turns that off, so a
block of 128 KiB or more is always its own mapping and goes back to the kernel when it is
freed. Measured: the agent's zstd context (~0.8 MiB, once per Kafka request) +0.90 MiB
resident after 20 compressions, +0.46 MiB with the fixed threshold; the pipeline's peak RSS
(librdkafka's decompressed batches, the decoder's column buffers, Python's lists of records)
-20 to -47 MB (benchmarks/pipeline_throughput.md, issue 17).

A no-op off glibc. Call it before the process starts its threads.
"""

from __future__ import annotations

from typing import Optional

_M_ARENA_MAX = -8          # mallopt parameters (glibc's malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024   # glibc's initial value, kept fixed


def tune_glibc_malloc(arena_max: Optional[int] = None) -> None:
    """Fix the mmap threshold (see the module docstring); with ``arena_max``, also bound
    the number of malloc arenas (glibc gives each thread that allocates its own)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        if arena_max is not None:
            libc.mallopt(_M_ARENA_MAX, arena_max)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass
