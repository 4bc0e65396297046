"""Errors a user can act on.

Every failure caused by input (a file, a flag, a config field, an environment variable) is raised
as a ``CharlabError`` whose message names the culprit and what to do. The CLI prints the message
without a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""


class CharlabError(Exception):
    """A failure the user can fix. The message must say where (file, line, field) and what to do."""

    exit_code = 2


class ConfigError(CharlabError):
    """A config or data file is malformed or has an invalid field."""


class ModelError(CharlabError):
    """A model reference cannot be resolved or loaded."""


class BackendError(CharlabError):
    """A generation backend failed in a way retries could not fix."""
