"""The Parquet bytes of a window file: a compiled encoder for the dataset's flat frames,
polars' writer for everything else.

A window file is small (one window of one partition: tens to thousands of rows, 46 or
71 columns), and polars' writer has a fixed cost per column (its streaming engine's
tasks, a cardinality sketch per column to choose an encoding) that is most of the
file's cost at that size: ~1.2 ms of CPU per file of a few hundred rows, 1.1-1.3 µs of
the pipeline's CPU per record in ``benchmarks/pipeline_stages.py``. The compiled
encoder (``foliowatch_parquetwrite``, ``pipeline/native/``, built into the central
virtualenv by ``scripts/bootstrap.sh``) writes the same columns in the simplest form
the format has, which every reader reads:

- one row group, one data page (v1) per column, every column ``OPTIONAL`` (as polars
  writes them), PLAIN values, definition levels in the RLE/bit-packed hybrid;
- each page compressed with zstd at ``ZSTD_LEVEL`` (polars' default level; the
  ``zstandard`` package, one compressor per thread);
- statistics per column: null count, and min and max (``min_value``/``max_value``,
  NaN left out, -0.0/+0.0 as the format asks, strings by unsigned bytes) with the
  type-defined column order, so readers can prune on them as on polars' files;
- types: Int64 (INT64), Float64 (DOUBLE), String (BYTE_ARRAY, STRING), Datetime in
  µs (INT64, TIMESTAMP(MICROS), adjusted to UTC when it has the UTC zone).

Any other column type, a frame without rows, or a page beyond the format's 2 GiB makes
it return None and polars writes the file: the same rows either way.
``FOLIOWATCH_PARQUET_WRITER=polars`` turns the compiled encoder off (benchmarks measure
both in one run).
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Optional

import polars as pl

from foliowatch import __version__
from foliowatch.native import load_native, say_once

log = logging.getLogger(__name__)

# The calling convention this module uses; the native module states the one it has.
FORMAT_VERSION = 1
WRITER_ENV = "FOLIOWATCH_PARQUET_WRITER"
ZSTD_LEVEL = 3
CREATED_BY = f"foliowatch version {__version__}"

_local = threading.local()


def _module():
    mod, reason = load_native("foliowatch_parquetwrite", WRITER_ENV, "polars",
                              "FORMAT_VERSION", FORMAT_VERSION, "the native Parquet writer",
                              "pipeline/native")
    if mod is not None:
        try:
            import zstandard  # noqa: F401  (the pages' codec)
        except ImportError as e:
            mod, reason = None, f"zstandard is not installed ({e})"
    if mod is None:
        say_once(log, "dataset files: the compiled Parquet writer is off (%s); polars "
                      "writes them (the same rows, ~1 ms more CPU per file)", reason)
    return mod


def _compress():
    """This thread's zstd compressor's ``compress`` (a compressor is not to be shared
    between threads)."""
    fn = getattr(_local, "compress", None)
    if fn is None:
        import zstandard
        fn = _local.compress = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress
    return fn


def native_bytes(frame: pl.DataFrame) -> Optional[bytes]:
    """``frame`` as a Parquet file by the compiled encoder, or None when it is not built
    (or turned off), the frame has no rows, or it cannot write one of its column types."""
    mod = _module()
    if mod is None:
        return None
    return mod.write(frame.__arrow_c_stream__(), _compress(), CREATED_BY)


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """``frame`` as a Parquet file (zstd, with statistics): the compiled encoder's, or
    polars' when it does not apply."""
    data = native_bytes(frame)
    if data is not None:
        return data
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()
