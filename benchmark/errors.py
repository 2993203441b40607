"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""


class BenchError(Exception):
    """A problem with the user's input (config, names, data files): reported without a traceback."""


class DataError(BenchError):
    """Malformed or unusable dataset files."""


class ConfigError(BenchError):
    """A bad configuration value, unknown name or inconsistent option."""
