"""The top floor: what stands on every component. The ``foliowatch`` command line
(``cli``), the demo, the report and the local services (Kafka, Prometheus, Alertmanager
started by PID) used by the demo and the tests. Nothing below this room imports it."""
