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


class CheckpointError(RlgenError):
    """A checkpoint file is damaged, or holds something a safe load refuses (pickled code)."""
