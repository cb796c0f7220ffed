"""Tracker registry: name -> builder and named parameter sets.

A tracker is built by a :class:`TrackerFactory`, a small picklable object (builder as an import string
``"package.module:attr"`` or a module-level callable, plus keyword arguments), so that worker processes
started with ``spawn`` can build their own tracker.

Built-in entries: ``ebm_atom`` (the EBM tracker; parameter sets are the YAML files of
``configs/tracking/``, or any parameter-file path: ``ebm_atom/path/to/my.yaml``) and baselines, not our
method: ``ncc`` (OpenCV normalised cross-correlation) with parameter sets ``default``, ``fixed_scale`` and
``fixed_template``; ``identity`` (always the first box); ``csrt`` and ``kcf`` (OpenCV-contrib's CSRT and
KCF trackers, the optional dependency ``opencv-contrib-python-headless``); ``nano`` (OpenCV's NanoTrack, a
learned Siamese tracker; its two ONNX files from the shared weights or ``--set backbone=... neckhead=...``).
``--tracker package.module:Class`` also works without registration.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ...utils import BadValueError, UnknownNameError, UserError
from ...utils.config import apply_dotted_overrides, merge_params

Builder = Union[str, Callable[..., Any]]


@dataclass(frozen=True)
class TrackerFactory:
    """Picklable zero-argument callable that builds a fresh tracker.

    Attributes:
        name: tracker name (first level of the results layout).
        params: parameter-set name (second level of the results layout).
        builder: ``"module:attr"`` or a module-level callable (class or function).
        kwargs: keyword arguments passed to the builder.
    """

    name: str
    params: str
    builder: Builder
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self) -> Any:
        return resolve_builder(self.builder)(**dict(self.kwargs))


def resolve_builder(builder: Builder) -> Callable[..., Any]:
    """Import ``"module:attr"`` (or return a callable unchanged).

    Raises:
        BadValueError naming the builder when the string is malformed, the module cannot be imported
        or has no such attribute.
    """
    if callable(builder):
        return builder
    module, _, attr = str(builder).partition(":")
    if not module or not attr:
        raise BadValueError(f"tracker builder must look like 'package.module:attr', got {builder!r}")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise BadValueError(f"tracker {builder!r}: cannot import {module!r} ({exc}); check the name and that "
                            "the package is on PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BadValueError(f"tracker {builder!r}: {obj.__name__ if hasattr(obj, '__name__') else obj!r} has "
                                f"no attribute {part!r}; check the name after ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BadValueError(f"tracker {builder!r} is not callable; name a class or a function")
    return obj


@dataclass
class _Entry:
    builder: Builder
    param_sets: Dict[str, Dict[str, Any]]
    description: str
    # "module:attr" of a function: parameter-set spec -> (results name, builder kwargs), or None when the
    # spec is not one of its files (lets a tracker take parameter files by path).
    param_resolver: Optional[Builder] = None
    # "module:attr" of a function that raises a UserError when an optional dependency is missing.
    requires: Optional[Builder] = None


_REGISTRY: Dict[str, _Entry] = {}


def register_tracker(name: str, builder: Builder, param_sets: Optional[Dict[str, Dict[str, Any]]] = None,
                     description: str = "", overwrite: bool = False, param_resolver: Optional[Builder] = None,
                     requires: Optional[Builder] = None) -> None:
    """Register a tracker.

    Args:
        name: registry key (also the results folder name).
        builder: ``"module:attr"`` or a module-level callable returning an object with
            ``initialize(image, info)`` and ``track(image, info)``.
        param_sets: name -> keyword arguments; ``"default"`` is added (empty) if absent.
        description: one line shown by ``tools/eval_tracking.py --list-trackers``.
        param_resolver: optional ``"module:attr"`` mapping a parameter-set spec that is not in
            ``param_sets`` (e.g. a YAML path) to ``(results name, kwargs)``, or None.
        requires: optional ``"module:attr"`` of a check that raises when a dependency is missing.
    """
    if name in _REGISTRY and not overwrite:
        raise KeyError(f"tracker {name!r} is already registered")
    sets = {"default": {}}
    sets.update(param_sets or {})
    _REGISTRY[name] = _Entry(builder, sets, description, param_resolver, requires)


def tracker_names() -> List[str]:
    return sorted(_REGISTRY)


def describe_trackers() -> Dict[str, Dict[str, Any]]:
    """name -> {"description", "params": [parameter-set names]}."""
    return {n: {"description": e.description, "params": sorted(e.param_sets)} for n, e in sorted(_REGISTRY.items())}


def get_tracker_factory(name: str, params: str = "default", **overrides: Any) -> TrackerFactory:
    """Factory for registered tracker ``name`` with parameter set ``params`` (plus keyword overrides).

    ``name`` may also be an import string ``"package.module:attr"`` (then ``params`` only names the
    results folder and ``overrides`` are the keyword arguments).
    """
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        if entry.requires is not None:
            resolve_builder(entry.requires)()
        resolved = None
        if params not in entry.param_sets and entry.param_resolver is not None:
            resolved = resolve_builder(entry.param_resolver)(params)
        if resolved is not None:
            return TrackerFactory(name, resolved[0], entry.builder, {**resolved[1], **overrides})
        if params not in entry.param_sets:
            raise UnknownNameError(f"tracker {name!r} has no parameter set {params!r}; "
                                   f"available: {', '.join(sorted(entry.param_sets))}")
        kwargs = dict(entry.param_sets[params])
        kwargs.update(overrides)
        return TrackerFactory(name, params, entry.builder, kwargs)
    if ":" in name:
        resolve_builder(name)  # fail now, in the parent, rather than in every worker
        short = name.rsplit(":", 1)[1].split(".")[-1]
        return TrackerFactory(short, params, name, dict(overrides))
    raise UnknownNameError(f"unknown tracker {name!r}; registered: {', '.join(tracker_names())} "
                           f"(or pass 'package.module:Class')")


def split_tracker_spec(spec: str, default_params: str = "default") -> Tuple[str, str]:
    """``"name/params"`` -> ``(name, params)``.

    A registered name takes everything after its ``/`` (a parameter-file path may hold ``/``); an import
    string ``"pkg.mod:Class"`` may carry ``/params`` too; a bare name gets ``default_params``.
    """
    head, sep, rest = spec.partition("/")
    if sep and head in _REGISTRY:
        return head, rest
    if "/" in spec:
        name, params = spec.rsplit("/", 1)
        return name, params
    return spec, default_params


def results_name(params: str, items: Sequence[str]) -> str:
    """Results-folder name of a parameter set with ``--set`` overrides: ``<params>+<items>``.

    The items are joined with ``,``; when that is long or holds characters unsafe in a folder name (a
    path), a 10-character hash of the parsed overrides stands for them.
    """
    if not items:
        return params
    tag = ",".join(items)
    if len(tag) > 60 or not re.fullmatch(r"[A-Za-z0-9_.,=+\-\[\]]+", tag):
        nested = apply_dotted_overrides({}, list(items))
        tag = hashlib.sha1(json.dumps(nested, sort_keys=True).encode()).hexdigest()[:10]
    return f"{params}+{tag}"


def with_overrides(factory: TrackerFactory, items: Sequence[str], params: Optional[str] = None) -> TrackerFactory:
    """The factory with ``key=value`` tracker-parameter overrides (values parsed as YAML).

    ``ebm_atom`` takes them as nested parameter overrides (``box_refinement.num_steps=5``); other trackers
    as constructor keyword arguments (``template_lr=0.1``). The results name becomes
    :func:`results_name` of the items, or ``params`` when given. One tracker is built here, so a bad key or
    value fails once, in the caller's process, rather than in every worker.

    Raises:
        UserError naming the keys a tracker does not take (other bad values raise their own UserError).
    """
    if not items:
        return factory if params is None else dataclasses.replace(factory, params=params)
    nested = apply_dotted_overrides({}, list(items))
    kwargs = dict(factory.kwargs)
    if factory.name == "ebm_atom":
        kwargs["overrides"] = merge_params(kwargs.get("overrides") or {}, nested, strict=False)
    else:
        kwargs.update(nested)
    name = params if params is not None else results_name(factory.params, items)
    out = dataclasses.replace(factory, params=name, kwargs=kwargs)
    try:
        out()
    except TypeError as exc:
        raise UserError(f"--set: tracker {factory.name!r} does not take {', '.join(sorted(nested))} "
                        f"({exc})") from None
    return out


_BASELINES = "ebm_refine.tracking.evaluation.baselines"
register_tracker(
    "ncc", f"{_BASELINES}:NCCTracker",
    {"fixed_scale": {"scales": (1.0,)},
     "fixed_template": {"template_lr": 0.0}},
    description="baseline: OpenCV normalised cross-correlation template matching (not our method)")
register_tracker("identity", f"{_BASELINES}:IdentityTracker",
                 description="baseline: reports the first-frame box in every frame")
for _algo, _what in (("csrt", "CSRT (discriminative correlation filter, channel and spatial reliability)"),
                     ("kcf", "KCF (kernelized correlation filter)")):
    register_tracker(_algo, f"{_BASELINES}:OpenCVContribTracker", {"default": {"algorithm": _algo}},
                     description=f"baseline: OpenCV-contrib's {_what}; needs opencv-contrib-python-headless",
                     requires=f"{_BASELINES}:require_opencv_contrib")
register_tracker("nano", f"{_BASELINES}:OpenCVNanoTracker",
                 description="peer: OpenCV's NanoTrack v2 (Siamese network, ONNX); --set backbone=<onnx> "
                             "neckhead=<onnx> for other files",
                 requires=f"{_BASELINES}:require_opencv_nano")
# The EBM tracker: parameter sets are the shipped parameter files (configs/tracking/<name>.yaml).
register_tracker(
    "ebm_atom", "ebm_refine.tracking.tracker.ebm_atom:EBMAtomTracker",
    {"default": {"params": "ebm"}, **{name: {"params": name} for name in
                                      ("ebm", "ebm_fast", "ebm_paper", "ebm_backtracking", "iounet", "norefine")}},
    description="ATOM-style tracker, box refinement by an EBM (ebm; ebm_paper without first-frame adaptation), "
                "IoU-Net (iounet) or none (norefine); "
                "ebm_atom/<path.yaml> for another parameter file",
    param_resolver="ebm_refine.tracking.tracker.params:tracker_param_set")
