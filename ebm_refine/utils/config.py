"""Nested-dict configs read from YAML: the tracker's parameter files and the tracker's training configs.

load_yaml               a YAML mapping, following ``_base_: other.yaml`` chains (resolved next to the file)
merge_params            recursive merge; strict: an unknown key is an error naming the dotted key
                        (and the new name of a renamed key)
apply_dotted_overrides  command-line ``a.b.c=value`` items (values parsed as YAML) into a nested dict

(The Detectron2 plugin uses Detectron2's CfgNode instead: :mod:`ebm_refine.detectron2.config`.)
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import yaml

from .errors import UserError

__all__ = ["load_yaml", "merge_params", "apply_dotted_overrides", "UnknownKeyError", "OverrideError"]


class UnknownKeyError(UserError, KeyError):
    """A parameter or config key that does not exist (a ``KeyError`` too, for callers that catch that)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OverrideError(UserError, ValueError):
    """A malformed command-line override (a ``ValueError`` too, for callers that catch that)."""


def merge_params(base: Dict[str, Any], override: Optional[Dict[str, Any]], path: str = "",
                 strict: bool = True, kind: str = "tracker parameter",
                 renamed: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Recursive dict merge; with ``strict`` an override key missing from ``base`` raises
    :class:`UnknownKeyError` naming the dotted key (``kind`` says what the keys are), or its new name when
    ``renamed`` (dotted old key -> new key) has it."""
    out = copy.deepcopy(base)
    if override is not None and not isinstance(override, dict):
        raise UserError(f"{path or 'top level'}: expected a mapping of {kind}s, got {override!r}")
    for key, value in (override or {}).items():
        where = f"{path}.{key}" if path else key
        if strict and key not in out and renamed and where in renamed:
            raise UnknownKeyError(f"{kind} {where!r} was renamed {renamed[where]!r}; use the new name")
        if strict and key not in out:
            known = ", ".join(sorted(map(str, out))) or "none"
            raise UnknownKeyError(f"unknown {kind} {where!r} (known at this level: {known}); check the spelling")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_params(out[key], value, where, strict, kind, renamed)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_dotted_overrides(target: Dict[str, Any], items: Sequence[str]) -> Dict[str, Any]:
    """Command-line ``a.b.c=value`` items (value parsed as YAML) written into ``target``, in place.

    Missing sections are created (unknown keys are caught when the result is merged strictly). An integer
    part indexes an existing list (``data.sources.0.sequences=[a,b]`` changes the first source's sequences).
    Raises :class:`OverrideError` (a ``UserError`` and ``ValueError``) for an item without ``=``, a path
    through a non-section value, a list index out of range or a value that is not YAML. Returns ``target``.
    """
    for item in items:
        if "=" not in item:
            raise OverrideError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise OverrideError(f"--set {key}: value {value!r} is not valid YAML ({exc.__class__.__name__})") from None
        node: Any = target
        parts = key.split(".")
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not re.fullmatch(r"\d+", p) or int(p) >= len(node):
                    raise OverrideError(f"--set {key}: {p!r} is not an index of the {len(node)}-entry list "
                                        f"{'.'.join(parts[:i])!r}")
                if last:
                    node[int(p)] = parsed
                else:
                    node = node[int(p)]
            elif isinstance(node, dict):
                if last:
                    node[p] = parsed
                else:
                    node = node.setdefault(p, {})
            else:
                raise OverrideError(f"--set {key}: {parts[i - 1]!r} is not a section")
    return target


def load_yaml(path: str, resolve_paths: Optional[Callable[[Dict[str, Any], str], None]] = None) -> Dict[str, Any]:
    """Read a YAML mapping, following ``_base_`` chains (base keys first, this file's keys on top).

    ``resolve_paths(data, path)``, if given, rewrites each file's own relative paths in place before the
    merge (so a path means the same whichever file of the chain names it).
    """
    with open(path, "r", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level; fix the file")
    if resolve_paths is not None:
        resolve_paths(data, path)
    base = data.pop("_base_", None)
    if base is not None:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(os.path.abspath(path)), base)
        data = merge_params(load_yaml(base_path, resolve_paths), data, strict=False)
    return data
