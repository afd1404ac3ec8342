"""saebench-vision: sparse autoencoders on vision models, as plugin-based suites and leaderboards.

The core knows no model, SAE, dataset or evaluator by name: they are plugins. This module stays
light (no torch) so that ``saebench --help`` and ``saebench plugins`` start fast.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "saebench_vision"
"""The one name for pluggy's markers, the plugin manager and the entry-point group."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = ["__version__", "hookimpl", "hookspec", "PROJECT_NAME"]
