"""Expected failures: each becomes one line on stderr (or a JSON object with --json) and an
exit code, never a traceback."""

from __future__ import annotations

# Exit codes.
OK = 0
FAILED = 1  # the job failed, does not exist, or already ended
USAGE = 2  # bad arguments, config, connection, authentication, a rejected submission
CANCELLED = 3
TIMEOUT = 124
INTERRUPTED = 130


class CliError(Exception):
    def __init__(self, message: str, code: int = USAGE, **details):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details


class Unreachable(CliError):
    """The portal could not be reached at all (refused, DNS, timeout)."""


class NotFound(CliError):
    def __init__(self, message: str):
        super().__init__(message, FAILED)


class Invalid(CliError):
    """A 400 with per-field messages."""

    def __init__(self, errors, message: str = "the portal rejected the request"):
        self.errors = errors
        self.lines = flatten_errors(errors)
        super().__init__(message, USAGE, errors=errors)


def flatten_errors(errors, prefix: str = "") -> list[str]:
    """{"params": {"seconds": ["must be at least 0"]}} -> ["params.seconds: must be at least 0"].
    A list of such objects (a batch) is numbered: "[1] kind: is required"."""
    out: list[str] = []
    if isinstance(errors, dict):
        for key, value in errors.items():
            if key in ("non_field_errors", "detail"):
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            out += flatten_errors(value, path)
    elif isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        out += [f"{prefix}: {e}" if prefix else e for e in errors]
    elif isinstance(errors, list):
        for index, value in enumerate(errors):
            out += flatten_errors(value, f"{prefix}[{index}]")
    elif errors not in (None, ""):
        out.append(f"{prefix}: {errors}" if prefix else str(errors))
    return out
