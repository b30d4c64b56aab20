"""foliowatch: fleet telemetry and regression detection for Linux kernel rollouts.

The installed package maps the repository's top-level folders under one namespace:
``foliowatch.agent`` (agent/), ``foliowatch.pipeline`` (pipeline/), ``foliowatch.detector``
(detector/), ``foliowatch.dashboards`` (dashboards/), ``foliowatch.simulator``
(simulator/). This package itself holds what they share: the wire schema, the dataset
contract, configuration and the CLI.
"""

__version__ = "0.1.0"
