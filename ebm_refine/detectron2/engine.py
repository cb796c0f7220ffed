"""``EBMTrainer``: Detectron2's ``DefaultTrainer`` for models with the EBM head, and config loading.

What it adds to ``DefaultTrainer`` (everything else is Detectron2's):

* evaluation of refined and unrefined boxes side by side (:class:`RefinementCOCOEvaluator`);
* checked data: degenerate boxes dropped and counted, unreadable images named (:mod:`.data`);
* :class:`EBMCheckpointer` (atomic saves, clear load messages) for periodic checkpoints and resuming;
* multi-process training on CPUs (``--num-gpus N`` with gloo): Detectron2 wraps the model with
  ``create_ddp_model``, which passes ``device_ids=[local_rank]``; PyTorch rejects ``device_ids`` for a
  CPU module. Detectron2 has no hook for the wrapping, so that one function is replaced, for the
  duration of ``DefaultTrainer.__init__`` only, by one that leaves ``device_ids`` out for CPU models.

Frozen-detector training needs nothing here: the model does it (:class:`~.meta_arch.EBMRCNN`), so it
holds with Detectron2's own ``DefaultTrainer`` or any other loop.
"""
from __future__ import annotations

import contextlib
import logging
import os
import weakref
from typing import Iterator, List, Optional

import detectron2.engine.defaults as d2_defaults
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import DatasetEvaluators

from ..utils.errors import UserError
from .checkpoint import EBMCheckpointer
from .config import ConfigValueError, add_ebm_config, renamed_key_hint, validate_solver_config
from .box_change import PER_BOX_FILE, BoxChangeEvaluator
from .data import CheckedDatasetMapper, DatasetError, load_dataset_dicts
from .detections import DetectionsMapper, RefinedDetectionsWriter, load_detections_into_dataset
from .evaluation import ImagesCOCOEvaluator, RefinementCOCOEvaluator

__all__ = ["EBMTrainer", "load_config", "ConfigError"]

logger = logging.getLogger(__name__)


class ConfigError(UserError):
    """A config file or option that cannot be merged (unknown key, bad value type, bad YAML)."""


def load_config(config_file: Optional[str] = None, opts: Optional[List[str]] = None) -> CfgNode:
    """Detectron2 config + ``MODEL.EBM`` keys, merged with ``config_file`` and ``KEY VALUE`` ``opts``.

    Unknown keys and malformed values are :class:`ConfigError` naming the key (Detectron2 raises a
    KeyError / AssertionError with the same text, which scripts would show as a traceback).
    """
    cfg = get_cfg()
    add_ebm_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file {config_file!r} not found; pass a YAML file (see configs/)")
        try:
            # allow_unsafe=False: Detectron2 would otherwise retry a file yaml.safe_load refuses with
            # yaml.unsafe_load, which runs the code a !!python/... tag names. _BASE_ files load the same way.
            cfg.merge_from_file(config_file, allow_unsafe=False)
        except yaml.constructor.ConstructorError as e:
            raise ConfigError(f"{_yaml_file(e, config_file)}: refused: {' '.join(str(e.problem).split())[:120]} "
                              "(a tag that would build a Python object or run code); a config holds plain "
                              "values only, remove the tag") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{_yaml_file(e, config_file)}: invalid YAML "
                              f"({' '.join(str(getattr(e, 'problem', None) or e).split())[:120]}); fix the "
                              "file's syntax") from None
        except (KeyError, AssertionError, ValueError, TypeError) as e:
            raise ConfigError(f"{config_file}: {_config_message(e)}") from None
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"options must be KEY VALUE pairs, got an odd number: {' '.join(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError, ValueError, TypeError) as e:
            raise ConfigError(f"command-line option: {_config_message(e)}") from None
    try:
        validate_solver_config(cfg)
    except ConfigValueError as e:
        raise ConfigError(f"{config_file or 'the config'}{' with its options' if opts else ''}: {e}") from None
    return cfg


def _yaml_file(error: "yaml.YAMLError", config_file: str) -> str:
    """``file:line`` of a YAML error (a ``_BASE_`` file when the error is there), else ``config_file``."""
    mark = getattr(error, "problem_mark", None)
    return f"{mark.name}:{mark.line + 1}" if mark is not None and mark.name else config_file


def _config_message(error: BaseException) -> str:
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    renamed = renamed_key_hint(text)
    if renamed is not None:
        return renamed
    return " ".join(text.split()) + " (check the key's spelling and value type in ebm_refine/detectron2/config.py)"


@contextlib.contextmanager
def _ddp_without_device_ids_for_cpu_models() -> Iterator[None]:
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if all(p.device.type == "cpu" for p in model.parameters()):
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class EBMTrainer(DefaultTrainer):
    """``DefaultTrainer`` + refined/unrefined evaluation, checked data and :class:`EBMCheckpointer`."""

    def __init__(self, cfg: CfgNode):
        validate_solver_config(cfg)  # also for a config built without load_config
        with _ddp_without_device_ids_for_cpu_models():
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before this call; the periodic
        # checkpointer hook built here must hold ours.
        self.checkpointer = EBMCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        dataset = load_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        return build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, True), dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        if not is_refiner(cfg):
            return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, False))
        # The box refiner refines another detector's detections: attach them like precomputed proposals.
        dataset = DatasetCatalog.get(dataset_name)
        if not all("detections" in r for r in dataset):
            files = list(cfg.DATASETS.DETECTION_FILES_TEST)
            tests = list(cfg.DATASETS.TEST)
            if len(files) != len(tests) or dataset_name not in tests:
                raise DatasetError(f"dataset {dataset_name!r} carries no detections: set DATASETS.DETECTION_FILES_TEST "
                                   f"to one COCO results file per DATASETS.TEST entry ({len(tests)})")
            dataset = [dict(r) for r in dataset]
            load_detections_into_dataset(dataset, files[tests.index(dataset_name)], dataset_name,
                                         min_score=cfg.MODEL.EBM.REFINER.MIN_SCORE,
                                         max_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
        return build_detection_test_loader(dataset=dataset, mapper=DetectionsMapper(cfg, False),
                                           num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        json_file = getattr(MetadataCatalog.get(dataset_name), "json_file", None)
        if json_file and not os.path.exists(json_file):
            DatasetCatalog.get(dataset_name)  # datasets generated on first use (the synthetic benchmark)
        if is_refiner(cfg):
            return DatasetEvaluators([
                RefinementCOCOEvaluator(dataset_name, output_folder),
                BoxChangeEvaluator(dataset_name, per_box_file=os.path.join(output_folder, PER_BOX_FILE),
                                   run_name=f"seed{cfg.SEED}"),
                RefinedDetectionsWriter(dataset_name, os.path.join(output_folder, "refined_detections.json")),
            ])
        # EBMRCNN's EBMROIHeads, EBMYOLOX's EnergyROIHeads (the refiner returned above).
        if cfg.MODEL.ROI_HEADS.NAME in ("EBMROIHeads", "EnergyROIHeads") and cfg.MODEL.EBM.REFINE.ENABLED:
            if not json_file:
                return RefinementCOCOEvaluator(dataset_name, output_folder)
            # Per-ground-truth-box errors too, for the multi-run significance protocol (tools/compare_runs.py).
            return DatasetEvaluators([
                RefinementCOCOEvaluator(dataset_name, output_folder),
                BoxChangeEvaluator(dataset_name, per_box_file=os.path.join(output_folder, PER_BOX_FILE),
                                   run_name=f"seed{cfg.SEED}"),
            ])
        return ImagesCOCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)


def is_refiner(cfg: CfgNode) -> bool:
    """Whether ``cfg`` builds :class:`~.refiner.EBMBoxRefiner` (or a subclass)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    from .refiner import EBMBoxRefiner

    return issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), EBMBoxRefiner)
