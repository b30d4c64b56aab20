"""foliowatch: fleet telemetry and regression detection for Linux kernel rollouts.

The installed package maps the repository's top-level folders under one namespace:
``foliowatch.agent`` (agent/), ``foliowatch.pipeline`` (pipeline/), ``foliowatch.detector``
(detector/), ``foliowatch.dashboards`` (dashboards/), ``foliowatch.simulator``
(simulator/) and ``foliowatch.shell`` (shell/: the CLI, demo, report and local services,
which stand on every component). This package itself is the ground floor they all
stand on: the wire schema, the dataset contract, the Kafka settings and durable file
writes. It imports nothing above it.
"""

__version__ = "0.1.0"
