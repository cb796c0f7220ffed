"""Small shared utilities: package resources, atomic file writing and the command-line error convention.

Nothing here imports Detectron2; everything is usable from the core, the plugin, the tracker and the tools.
"""
from .errors import UserError
from .fileio import atomic_save_torch, atomic_write_bytes, atomic_write_text, atomic_writer
from .resources import data_root, resource_path, shared_data_dir

__all__ = [
    "UserError",
    "atomic_writer",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_save_torch",
    "data_root",
    "resource_path",
    "shared_data_dir",
]
