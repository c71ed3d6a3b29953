"""Errors a person can act on.

Expected bad input (a malformed study file, an unknown language, a missing model) raises
`UserError`; the CLI prints its message and exits non-zero without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration: the message names the file and field to fix."""


class ValidationFailed(Exception):
    """A run's data failed its Great Expectations suites and stays in quarantine."""

    def __init__(self, message: str, summary_path: str | None = None) -> None:
        super().__init__(message)
        self.summary_path = summary_path


class DeploymentFailing(UserError):
    """A deployment's requests kept failing in transport: its sampling stopped early (fail fast).
    The samples written so far are kept; resuming the run asks only for the rest."""
