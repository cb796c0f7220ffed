"""Files ebm_refine reads at run time: shipped configs, tracker parameter files and tracker networks, and the
weights folder for third-party weights that are not shipped (:func:`weights_dir`).

They live in ``configs/`` and ``checkpoints/`` of the source tree. ``setup.py`` installs them into the
package (``ebm_refine/configs``, ``ebm_refine/checkpoints``), so :func:`data_root` is the package folder for
an installed copy and the repository root for a source checkout (editable installs included). Every
reader of shipped files goes through :func:`resource_path`; user paths are never resolved against it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from .errors import MissingFileError

__all__ = ["data_root", "resource_path", "list_resources", "source_checkout", "shared_data_dir", "weights_dir",
           "find_weights", "MissingResourceError"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]
_MARKER = Path("configs") / "Base-EBM-RCNN-FPN.yaml"


class MissingResourceError(MissingFileError):
    """A shipped file that does not exist (a ``FileNotFoundError`` too, for callers that catch that)."""


def source_checkout() -> Optional[Path]:
    """The repository root when ebm_refine runs from a source checkout, else None."""
    repo = PACKAGE_DIR.parent
    if (repo / "setup.py").is_file() and (repo / _MARKER).is_file():
        return repo
    return None


def data_root() -> Path:
    """The folder that holds ``configs/`` and ``checkpoints/`` (installed package or source checkout)."""
    if (PACKAGE_DIR / _MARKER).is_file():
        return PACKAGE_DIR
    repo = source_checkout()
    if repo is not None:
        return repo
    raise MissingResourceError(
        f"ebm_refine's data files (configs/, checkpoints/) are neither in {PACKAGE_DIR} nor in a source "
        "checkout: reinstall the package with `pip install .`"
    )


def resource_path(relative: str, must_exist: bool = True) -> Path:
    """Absolute path of a shipped file, e.g. ``resource_path("configs/tracking/ebm.yaml")``.

    Raises:
        MissingResourceError: ``must_exist`` and there is no such shipped file.
    """
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"resource paths are relative to the data root and stay inside it, got {relative!r}")
    path = data_root() / rel
    if must_exist and not path.exists():
        raise MissingResourceError(f"no shipped file {relative!r} (looked in {data_root()})")
    return path


def list_resources(folder: str, pattern: str = "*") -> List[str]:
    """Shipped files under ``folder`` matching ``pattern`` (recursive), relative to ``folder``, sorted."""
    root = resource_path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(pattern) if p.is_file())


def _shared_folder(env_var: str, name: str) -> Optional[Path]:
    """``$env_var``, else ``<repo>/../shared/<name>`` in a source checkout, else None."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    repo = source_checkout()
    return repo.parent / "shared" / name if repo is not None else None


def shared_data_dir() -> Optional[Path]:
    """Real test/benchmark data: ``$EBM_SHARED_DATA``, else ``<repo>/../shared/data`` in a checkout, else None."""
    return _shared_folder("EBM_SHARED_DATA", "data")


def weights_dir() -> Optional[Path]:
    """Third-party weights (e.g. ``yolox_nano.onnx``): ``$EBM_WEIGHTS_DIR``, else ``<repo>/../shared/weights`` in a
    checkout, else None."""
    return _shared_folder("EBM_WEIGHTS_DIR", "weights")


def find_weights(path: str) -> str:
    """``path`` when it exists, is absolute or is a URL; else ``path`` under :func:`weights_dir` (whether or not
    it exists there: the caller names both places in its error), so a file name such as ``yolox_nano.onnx``
    finds the weights folder's copy."""
    if not path or "://" in path or os.path.isabs(path) or os.path.exists(path):
        return path
    folder = weights_dir()
    return str(folder / path) if folder is not None else path
