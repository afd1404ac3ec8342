"""One exception tree. The CLI prints any ``SaebenchError`` as a single line, no traceback.

Messages name the file, the YAML path, the bad value and the fix, e.g.
``suites/x.yaml: saes[1].args: unknown key `kk` for SAE `topk` (expected: k, expansion)``.
"""

from __future__ import annotations


class SaebenchError(Exception):
    """Base of every error the project raises on purpose."""


class PluginError(SaebenchError):
    """A plugin failed to load, registered something malformed, or clashes with another."""


class DuplicateComponentError(PluginError):
    """Two plugins registered the same component name."""


class UnknownComponentError(SaebenchError):
    """A suite or command named a component that no plugin registers."""


class SuiteError(SaebenchError):
    """A suite file is malformed; the message says where and how to fix it."""


class ConfigError(SaebenchError):
    """A component's arguments do not fit its Config."""


class CacheError(SaebenchError):
    """The activation cache is unusable (not merely stale: stale entries are rebuilt)."""


class WeightsNotFoundError(SaebenchError):
    """Model weights could not be found (offline, gated, wrong id, missing folder)."""


class DatasetError(SaebenchError):
    """A dataset could not be read (missing folder, empty split, bad layout)."""


class ResultsError(SaebenchError):
    """The results store cannot answer the request (no such suite, corrupt database...)."""


class ModelMismatchError(WeightsNotFoundError):
    """A folder or file holds another model than the adapter expects (wrong architecture,
    missing or unexpected weights): refused, never replaced by a randomly initialised model."""
