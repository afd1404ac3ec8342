"""Built-in plugins of saebench-vision, importable as ``saebench_vision_plugins``.

Each sub-package (models, saes, datasets, evaluators) has a light ``hooks.py`` that registers
its components by reference; the implementations import torch and friends only when used.
"""
