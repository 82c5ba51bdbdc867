"""Errors rlgen raises on purpose: each names what the user must fix (file, key, plugin).

The CLI prints these as one message and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RlgenError(Exception):
    """Base of every error the CLI turns into a one-line message."""


class ConfigError(RlgenError):
    """The run configuration (file, key or value) is wrong."""


class PluginError(RlgenError):
    """A plugin is missing, duplicated, failed to import, or broke a data contract."""


class PluginFault(RlgenError):
    """A plugin raised an unexpected exception during a run (its bug, not the user's input).

    The CLI prints it as one line (plugin, hook, step, where the traceback went) and exits 1,
    not 2: the config was fine, the run stopped.
    """

    def __init__(self, message: str, *, kind: str, plugin: str, hook: str, step: int, log_file: str) -> None:
        super().__init__(message)
        self.kind, self.plugin, self.hook, self.step, self.log_file = kind, plugin, hook, step, log_file


class CheckpointError(RlgenError):
    """A checkpoint file is damaged, or holds something a safe load refuses (pickled code)."""
