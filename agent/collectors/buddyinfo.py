"""``/proc/buddyinfo``: free blocks per order and zone, reduced to fragmentation figures.

Format (one line per node and zone; column ``i`` is the number of free blocks of order
``i``, i.e. of ``2**i`` contiguous pages)::

    Node 0, zone   Normal   1652   1036    493    285    136     46     11    281 ...

The number of columns is ``MAX_PAGE_ORDER + 1`` and depends on the kernel build, not
on the memory size: 11 on x86_64 and arm64 with 4 KiB pages, 12 on arm64 with 16 KiB
pages, 14 on arm64 with 64 KiB pages (ARCH_FORCE_MAX_ORDER 10 / 11 / 13). Never assume a
count; read it from the file.

Fragmentation: the *unusable free space index* (Mel Gorman, "Measuring the Impact of
the Linux Memory Manager", and ``unusable_free_index()`` in mm/vmstat.c). For a
request of order ``j``::

                        free_pages_total - sum_{i >= j} 2**i * n_i
    unusable(j)  =   ------------------------------------------------
                                    free_pages_total

    free_pages_total = sum_i 2**i * n_i

where ``n_i`` is the number of free blocks of order ``i``. It is the share of free
memory that cannot serve an order-``j`` allocation without compaction: 0 means every
free page sits in a block of order >= j, values near 1 mean the free memory is there but
shredded. ``unusable(0)`` is always 0.

The agent reports it host-wide, summing ``n_i`` over every node and zone (page-cache
folios may come from any zone the mapping's gfp mask allows), as gauges:

- ``frag_unusable_order_N`` for every order ``N >= 1`` the kernel has, which covers the
  folio orders iomap's buffered writes ask for (up to the PMD order);
- ``frag_unusable_1m``: the index at the order of a 1 MiB block *for this host's page
  size* (order 8 with 4 KiB pages, 6 with 16 KiB, 4 with 64 KiB), the size of one
  buffered-write chunk in the seed regression, comparable across architectures.

With no free memory at all the index is undefined and the gauges are absent.
"""

from __future__ import annotations

from itertools import accumulate, zip_longest
from typing import Dict, List, NamedTuple, Optional, Sequence
from foliowatch.agent.collectors._io import read_lines

ONE_MIB = 1 << 20


class ZoneFree(NamedTuple):
    node: int
    zone: str
    free_blocks: List[int]   # index = order


def parse(text: str) -> List[ZoneFree]:
    zones: List[ZoneFree] = []
    for line in text.splitlines():
        # "Node 0, zone   Normal   1652 1036 ..."
        head, sep, rest = line.partition("zone")
        if not sep or not head.startswith("Node"):
            continue
        try:
            node = int(head.split()[1].rstrip(","))
        except (IndexError, ValueError):
            continue
        parts = rest.split()
        if len(parts) < 2:
            continue
        try:
            blocks = [int(p) for p in parts[1:]]
        except ValueError:
            continue
        zones.append(ZoneFree(node, parts[0], blocks))
    return zones


def total_blocks(zones: Sequence[ZoneFree]) -> List[int]:
    """Free blocks per order summed over every node and zone (one column sum per order)."""
    return list(map(sum, zip_longest(*(z.free_blocks for z in zones), fillvalue=0)))


def free_pages(blocks: Sequence[int]) -> int:
    return sum(n << order for order, n in enumerate(blocks))


def unusable_index(blocks: Sequence[int], order: int) -> Optional[float]:
    """Share of free pages unusable for an order-``order`` allocation (Gorman's index).

    ``None`` when there are no free pages (undefined) or ``order`` exceeds what the
    buddy allocator manages on this kernel.
    """
    if order < 0 or order >= len(blocks):
        return None
    total = free_pages(blocks)
    if total == 0:
        return None
    usable = sum(n << i for i, n in enumerate(blocks) if i >= order)
    return (total - usable) / total


def order_of(size_bytes: int, page_size: int) -> int:
    """Order of a block of ``size_bytes`` (a power-of-two multiple of ``page_size``)."""
    pages = max(1, size_bytes // page_size)
    return pages.bit_length() - 1


_ORDER_NAMES = tuple(f"frag_unusable_order_{order}" for order in range(16))   # made once


def gauges(zones: Sequence[ZoneFree], page_size: int) -> Dict[str, float]:
    """``unusable_index`` at every order, from one pass of suffix sums (the pages in
    blocks of order >= j for every j) instead of one sum per order."""
    blocks = total_blocks(zones)
    out: Dict[str, float] = {}
    if not blocks:
        return out
    # usable[j]: free pages in blocks of order >= j
    usable = list(accumulate([n << order for order, n in enumerate(blocks)][::-1]))[::-1]
    total = usable[0]
    if total:
        width = len(blocks)
        names = _ORDER_NAMES[1:width] if width <= len(_ORDER_NAMES) else [
            f"frag_unusable_order_{order}" for order in range(1, width)]
        out = {name: (total - u) / total for name, u in zip(names, usable[1:])}
        one_mib = order_of(ONE_MIB, page_size)
        if one_mib < width:
            out["frag_unusable_1m"] = (total - usable[one_mib]) / total
    out["buddy_free_bytes"] = float(total * page_size)
    return out


def read(proc: str = "/proc") -> List[ZoneFree]:
    return parse(read_lines(f"{proc}/buddyinfo"))
