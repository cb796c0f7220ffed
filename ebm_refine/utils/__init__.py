"""Small shared utilities: package resources, atomic file writing, image reading, the command-line error
convention, and (``ebm_refine.utils.config``) the YAML config helpers of the tracker and its training.

Nothing here imports Detectron2; everything is usable from the core, the plugin, the tracker and the tools.
"""
from .errors import BadValueError, MissingFileError, UnknownNameError, UserError
from .fileio import atomic_save_torch, atomic_write_bytes, atomic_write_text, atomic_writer, check_writable, file_lock
from .images import IMAGE_EXTENSIONS, ImageDecodeError, read_image
from .resources import data_root, resource_path, shared_data_dir

__all__ = [
    "UserError",
    "MissingFileError",
    "UnknownNameError",
    "BadValueError",
    "atomic_writer",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_save_torch",
    "file_lock",
    "check_writable",
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "read_image",
    "data_root",
    "resource_path",
    "shared_data_dir",
]
