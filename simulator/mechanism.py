"""The mechanism the agent's tracepoint collector sees: page-cache bytes and direct
compaction attempts by allocation-order bucket (the ``tp_*`` counters of
``schema.TRACEPOINT_COUNTERS``), per host and interval.

A kernel's class (``scenario.MECHANISMS``, declared per kernel build in ``[[kernel]]``
tables; ``unaffected`` by default) decides how its buffered writes on XFS allocate
page-cache folios. Per host h and interval, with ``f`` its fragmentation
(``frag_unusable_1m``) and ``L`` the share of written bytes whose folio order hint is
costly (> ``PAGE_ALLOC_COSTLY_ORDER``, 3):

    p_fail        = f ** (ORDER_1M / REQUEST_ORDER)    unusable index at the requested
                                                       order (1 MiB is order 8 with 4K
                                                       pages, order 4 with 64K pages)
    affected      large-folio share = L * (1 - p_fail * (1 - COMPACTION_SUCCESS * (1 - f)))
                  costly direct compaction attempts ~ Poisson(large requests * p_fail)
    fixed         large-folio share = L * (1 - p_fail)      (costly orders fail fast and
                  fall back to small folios); no costly direct compaction attempts
    unaffected    large-folio share = 0 (small folios only); no costly attempts

so on fresh memory (f near 0) an affected kernel shows no costly attempts, and they rise
from zero as the host fragments: the first sign of the seed regression, before its
throughput loss is statistically visible. ext4 here adds small folios on every kernel
(no large folios in its buffered write path on the kernels modelled). Attempts at
orders 1-3 follow the host's compaction stalls on every kernel; order 0 never compacts.

The model draws from its own random stream, so the rest of a scenario's telemetry is
the same with or without it.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from foliowatch.schema import ORDER_BUCKETS, TRACEPOINT_COUNTERS

from .fleet import ARCH_PAGE, FS_NAMES, Plan
from .scenario import MECHANISMS

AFFECTED, FIXED, UNAFFECTED = (MECHANISMS.index(m) for m in ("affected", "fixed", "unaffected"))
# share of buffered-write bytes whose folio order hint is costly (writes of 64 KiB and up
# with 4K pages; of 1 MiB and up with 64K pages, so fewer)
LARGE_REQUEST_SHARE = {4096: 0.90, 65536: 0.35}
# the typical costly order asked for (256 KiB folios with 4K pages, 1 MiB with 64K)
REQUEST_ORDER = {4096: 6, 65536: 4}
ORDER_1M = {4096: 8, 65536: 4}
# share of the large folios (bytes and attempts) of order >= 8 (1 MiB and up on 4K pages)
ORDER_8_UP_SHARE = {4096: 0.25, 65536: 0.0}
# small folios split between order 0 and orders 1-3
ORDER_0_SHARE = 0.5
# share of costly direct compactions that do yield the large folio on lightly fragmented
# memory (falls with fragmentation)
COMPACTION_SUCCESS = 0.3

# filesystems whose buffered writes get large folios on the kernels modelled
LARGE_FOLIO_FILESYSTEMS = ("xfs",)

assert ORDER_BUCKETS == ("order_0", "order_1_3", "order_4_7", "order_8_up")


def cohort_mechanism(sc, version: str, arch: str, fs: str) -> str:
    """The ``MECHANISMS`` class a cohort's hosts show on ``version``: the kernel build's
    class on a filesystem with large folios, ``unaffected`` on the others."""
    return sc.mechanism(version, arch) if fs in LARGE_FOLIO_FILESYSTEMS else "unaffected"


class MechanismModel:
    """Per-host constants of a ``Plan``; ``counters`` gives one interval's ``tp_*``."""

    def __init__(self, plan: Plan, seed: int):
        sc = plan.scenario
        self.rng = np.random.default_rng([seed, 0x7CE5])
        self.cls = np.array([[MECHANISMS.index(sc.mechanism(v, arch)) for arch, _ in ARCH_PAGE]
                             for v in plan.versions], dtype=np.int8)
        self.arch_page = plan.arch_page
        self.xfs = np.isin(plan.fs_idx, [FS_NAMES.index(f) for f in LARGE_FOLIO_FILESYSTEMS])
        page = np.array([p for _, p in ARCH_PAGE])[plan.arch_page]

        def per_page(table) -> np.ndarray:
            return np.array([table[p] for p in page], dtype=float)
        self.large_request = np.where(self.xfs, per_page(LARGE_REQUEST_SHARE), 0.0)
        self.exponent = per_page(ORDER_1M) / per_page(REQUEST_ORDER)
        self.folio_bytes = page * 2.0 ** per_page(REQUEST_ORDER)
        self.share_8up = per_page(ORDER_8_UP_SHARE)

    def counters(self, ver: np.ndarray, write_bytes: np.ndarray, frag: np.ndarray,
                 stalls: np.ndarray) -> Dict[str, np.ndarray]:
        cls = self.cls[ver, self.arch_page]
        large_req = np.where(cls != UNAFFECTED, self.large_request, 0.0)
        p_fail = np.clip(frag, 0.0, 1.0) ** self.exponent
        affected = (cls == AFFECTED) & (large_req > 0)
        kept = 1.0 - p_fail * np.where(affected, 1.0 - COMPACTION_SUCCESS * (1.0 - frag), 1.0)
        wb = write_bytes.astype(float)
        large = np.rint(wb * large_req * kept).astype(np.int64)
        b8 = np.rint(large * self.share_8up).astype(np.int64)
        small = write_bytes - large
        b0 = np.rint(small * ORDER_0_SHARE).astype(np.int64)
        tries = np.zeros(len(wb), dtype=np.int64)
        idx = np.nonzero(affected)[0]
        if len(idx):
            lam = wb[idx] * large_req[idx] / self.folio_bytes[idx] * p_fail[idx]
            tries[idx] = self.rng.poisson(lam)
        t8 = np.rint(tries * self.share_8up).astype(np.int64)
        values = (b0, small - b0, large - b8, b8,
                  np.zeros(len(wb), dtype=np.int64), stalls, tries - t8, t8, tries)
        return dict(zip(TRACEPOINT_COUNTERS, values))
