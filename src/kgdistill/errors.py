"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class KGDistillError(Exception):
    """An error caused by user input (a file, a config value, a model folder), not by a bug."""


class DataError(KGDistillError):
    """A dataset file is malformed; the message names the file and line."""


class ConfigError(KGDistillError):
    """A config key or value is wrong; the message names the key."""


class CheckpointError(KGDistillError):
    """A model or checkpoint folder is missing, truncated, corrupted or incompatible."""
