"""Errors that name the bad input; the CLI prints them as one line and exits non-zero."""


class InputError(Exception):
    """A user-supplied input (file, crop, config key) is wrong; the message names it."""


class ConfigError(InputError):
    """The configuration does not match the schema."""
