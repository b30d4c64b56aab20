"""The project's exception types. Library code raises these (or subclasses kept beside
the code that raises them); only the command line (``shell/cli.py``) turns them into an
exit code and one line on stderr. A message names the input, what was wrong with it and
what to do, so that it can be printed as it is."""

from __future__ import annotations


class FoliowatchError(Exception):
    """Base of every error meant for the user rather than for a traceback."""


class ConfigError(FoliowatchError, ValueError):
    """A configuration value or command-line argument is wrong."""


class InputError(FoliowatchError):
    """Input data (a dataset, a file of records, a state file) cannot be used as given."""


class ServiceError(FoliowatchError, RuntimeError):
    """A service the command needs (Kafka, Prometheus, Grafana, ...) failed or refused."""
