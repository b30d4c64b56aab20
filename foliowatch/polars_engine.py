"""The polars engine for lazy queries over frames already in memory.

polars 2.x runs a lazy ``collect()`` on its default engine, "auto", which chose the
streaming engine for these queries: on the pipeline's partial sums of a batch of 10,000
records it took 5.5x the CPU of the in-memory engine (29.6 vs 5.4 ms, polars 2.1), and
the detector's incremental run took 1.17x the wall time (2.33 vs 1.99 s on 2,000 hosts;
benchmarks/pipeline_throughput.md, eleventh pass). An eager frame method runs in memory
already. Reads of Parquet files choose their engine where they are made
(``detector.frames``): the streaming engine bounds the memory of a large scan.
"""

IN_MEMORY = "in-memory"
