"""Errors that map to the documented exit codes (0 ok, 1 build failed, 2 bad input)."""


class BadInput(Exception):
    """User input is wrong (config, template, seed pool, CLI argument). Exit code 2.

    The message must name the file and the field, key or line at fault.
    """

    exit_code = 2


class BuildFailed(Exception):
    """The build could not complete (engine dead, failure budget exceeded). Exit code 1."""

    exit_code = 1
