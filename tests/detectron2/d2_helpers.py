"""Helpers for the Detectron2 plugin tests: a CPU-sized config and tools/train_net.py as a user runs it."""
import os
import subprocess
import sys
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from ebm_refine.data import SyntheticDetectionConfig
from ebm_refine.detectron2 import get_ebm_cfg

REPO = Path(__file__).resolve().parents[2]
# The project's detector weights (yolox_nano.onnx, ...): $EBM_WEIGHTS_DIR or <repo>/../shared/weights.
WEIGHTS_DIR = Path(os.environ.get("EBM_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
SMALL = SyntheticDetectionConfig(image_size=(128, 128), size_range=(14.0, 60.0), objects_per_image=(1, 5))


def small_cfg(output_dir, train="test_synth_train", test="test_synth_val", extra=()):
    """The embedded-default config shrunk for tests (128 px, tiny heads, a few iterations)."""
    opts = [
        "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "MODEL.COMPACT_RESNET.WIDTHS", "[16, 16, 32, 32]", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.EBM.HEAD.FC_DIM", "64", "MODEL.EBM.NUM_SAMPLES", "16",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output_dir),
        *extra,
    ]
    return get_ebm_cfg("Synthetic/ebm_compact_fpn_synthetic.yaml", opts)


def register_args(*names):
    """``--register-coco`` arguments that make the test datasets ``names`` known to a train_net process."""
    args = []
    for name in names:
        DatasetCatalog.get(name)  # generates a synthetic split's files on first use
        meta = MetadataCatalog.get(name)
        args += ["--register-coco", name, meta.json_file, meta.image_root]
    return args


def run_train_net(tmp_path, cfg, *flags, datasets=(), check=True, env=None):
    """``python tools/train_net.py --config-file <cfg dumped> FLAGS`` in a fresh process; returns the result."""
    cfg_file = tmp_path / f"config_{len(list(tmp_path.glob('config_*.yaml')))}.yaml"
    cfg_file.write_text(cfg.dump())
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(cfg_file),
           *register_args(*datasets), *flags]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "EBM_DEBUG": "", **(env or {})}
    proc = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def refiner_cfg(output_dir, train="test_synth_train", extra=()):
    """The COCO-Refine config shrunk for tests: random 128-px MobileNetV2 trunk, tiny FPN and head."""
    opts = [
        "DATASETS.TRAIN", f"('{train}',)", "MODEL.MOBILENET_V2.WEIGHTS", "",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "160", "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.EBM.HEAD.FC_DIM", "32",
        "MODEL.EBM.NUM_SAMPLES", "8", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(output_dir), *extra,
    ]
    return get_ebm_cfg("COCO-Refine/ebm_refiner_mobilenet_v2_fpn.yaml", opts)


def yolox_cfg(weights, *extra, config="COCO-Detection/yolox_nano.yaml"):
    """A shipped YOLOX config with ``MODEL.WEIGHTS`` = ``weights``, no data-loader workers."""
    return get_ebm_cfg(config, ["MODEL.WEIGHTS", str(weights), "DATALOADER.NUM_WORKERS", "0", *extra])
