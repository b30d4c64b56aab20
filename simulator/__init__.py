"""foliowatch.simulator: a simulated fleet's telemetry, kernel rollouts and injected
regressions, with ground truth; the demo's data source, the pipeline's load generator
and the detector's examiner.

    from foliowatch.simulator import load_scenario, simulate_frame, write_files
    sc = load_scenario("seed-iomap-arm64-xfs", hosts=2000, hours=12)
    paths = write_files(sc, "out/", seed=1, fmt="parquet")

Modules: ``scenario`` (files and validation), ``fleet`` (the plan: hosts and events),
``model`` (the physics per interval), ``physics`` (alternative relations for it, drawn
at random per run), ``mechanism`` (the tracepoint counters from each kernel's mechanism
class), ``frames`` (chunks, wire conversion), ``native_encode`` (the compiled wire encoder), ``truth``
(ground truth), ``outputs`` (files, Kafka), ``main`` (the CLI).
"""

from .frames import FLAT_COLUMNS, simulate_frame, to_wire_bytes, to_wire_frame, to_wire_json
from .outputs import produce_to_kafka, write_files
from .scenario import Scenario, ScenarioError, list_scenarios, load_scenario
from .truth import ground_truth, host_table

__all__ = ["load_scenario", "list_scenarios", "simulate_frame", "to_wire_json", "to_wire_bytes",
           "to_wire_frame", "write_files", "produce_to_kafka", "ground_truth", "host_table", "Scenario",
           "ScenarioError", "FLAT_COLUMNS"]
