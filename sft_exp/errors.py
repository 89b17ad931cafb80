"""Errors that are the user's to fix: the CLI prints their message alone, without a traceback."""


class UserError(Exception):
    """A mistake in the config, the data or the command line. The message says what, where and what to do."""


class ConfigError(UserError):
    """A config value that cannot work (names the key)."""


class DataError(UserError):
    """A data source or row that cannot be used (names the file and row)."""
