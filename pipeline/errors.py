"""Domain errors. The CLI turns any RelayImpactError into one clear line and exit code 1.

Each subclass also subclasses the builtin it resembles, so callers may catch either.
"""


class RelayImpactError(Exception):
    """Base of every error relay-impact raises on purpose."""


class ConfigError(RelayImpactError, ValueError):
    """The tenant configuration (TOML or a PowerShell export) is wrong: names file, key and what was expected."""


class InputFormatError(RelayImpactError, ValueError):
    """A log file is unreadable or not in the expected format: names the file and what was expected."""


class WorkdirError(RelayImpactError, FileNotFoundError):
    """A WORKDIR lacks what a step needs (for example `evaluate` before `ingest`)."""
