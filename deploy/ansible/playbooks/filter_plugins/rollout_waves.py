"""Wave plan of the kernel rollout: the batches Ansible's ``serial`` makes of a host list.

``rollout-kernel.yml`` prints this plan (check mode, dry run) and numbers its waves with
it, so it must cut the hosts exactly as the play's ``serial`` does: each entry is a host
count or a percentage of all hosts (rounded down, at least 1), the last entry repeats
until no host is left.
"""

from __future__ import annotations


def _batch_size(entry, total: int) -> int:
    """As Ansible's pct_to_int: a percentage rounds down to at least 1 host; a count of
    0 or less means every remaining host."""
    text = str(entry).strip()
    if text.endswith("%"):
        return int(int(text[:-1]) / 100.0 * total) or 1
    size = int(text)
    return size if size > 0 else total


def foliowatch_waves(hosts, serial):
    """``hosts`` cut into the waves ``serial`` (a list of counts or "N%") makes."""
    hosts = list(hosts)
    serial = list(serial) if isinstance(serial, (list, tuple)) else [serial]
    if not serial:
        return [hosts] if hosts else []
    waves, i, step = [], 0, 0
    while i < len(hosts):
        size = _batch_size(serial[min(step, len(serial) - 1)], len(hosts))
        waves.append(hosts[i:i + size])
        i += size
        step += 1
    return waves


def foliowatch_wave_number(waves, batch) -> int:
    """1-based number of the wave whose first host starts ``batch``."""
    first = list(batch)[0]
    for n, wave in enumerate(waves, 1):
        if wave and wave[0] == first:
            return n
    raise ValueError(f"host {first!r} starts no wave of the plan")


def foliowatch_plan_lines(waves, hostvars, fleet_var: str):
    """One line per wave: its number, hosts and the fleets the verdict will be asked about."""
    lines = []
    for n, wave in enumerate(waves, 1):
        fleets = sorted({str(hostvars[h].get(fleet_var, "default")) for h in wave})
        lines.append(f"wave {n}/{len(waves)}: {len(wave)} host(s) {', '.join(wave)}; "
                     f"verdict for fleet(s) {', '.join(fleets)}")
    return lines


def foliowatch_verdict_lines(results, decision: int):
    """From the looped ``foliowatch verdict --json`` results, one line per cohort whose
    decision is ``decision`` (1 regression, 2 not enough evidence): cohort, kernels and
    the verdict's reasons (effect, interval, what is missing)."""
    import json
    lines = []
    for r in results:
        if r.get("rc") != decision:
            continue
        fleet = r.get("item")
        try:
            body = json.loads(r.get("stdout") or "")
        except ValueError:
            lines.append(f"fleet {fleet}: exit {decision}: "
                         f"{(r.get('stderr') or r.get('stdout') or '').strip()}")
            continue
        groups = [g for g in body.get("groups", []) if g.get("decision") == decision]
        for g in groups:
            lines.append(f"cohort {g['group']} {g['kernel_from']} -> {g['kernel_to']} "
                         f"({g.get('hosts_new', 0)} new vs {g.get('hosts_base', 0)} baseline hosts): "
                         + "; ".join(g.get("reasons") or ["no reason given"]))
        if not groups:
            lines.append(f"fleet {fleet}: {body.get('verdict', 'exit %d' % decision)}: "
                         + "; ".join(body.get("notes") or ["no cohort named"]))
    return lines


class FilterModule:
    def filters(self):
        return {"foliowatch_waves": foliowatch_waves,
                "foliowatch_wave_number": foliowatch_wave_number,
                "foliowatch_plan_lines": foliowatch_plan_lines,
                "foliowatch_verdict_lines": foliowatch_verdict_lines}
