"""Helpers for the Detectron2 plugin tests: a CPU-sized config and the train_net script as a module."""
import importlib.util
from pathlib import Path

from ebm_refine.data import SyntheticDetectionConfig
from ebm_refine.detectron2 import get_ebm_cfg

REPO = Path(__file__).resolve().parents[2]
SMALL = SyntheticDetectionConfig(image_size=(128, 128), size_range=(14.0, 60.0), objects_per_image=(1, 5))
def small_cfg(output_dir, train="test_synth_train", test="test_synth_val", extra=()):
    """The embedded-default config shrunk for tests (128 px, tiny heads, a few iterations)."""
    opts = [
        "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "MODEL.EBM_BACKBONE.WIDTHS", "[16, 16, 32, 32]", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.EBM.HEAD.FC_DIM", "64", "MODEL.EBM.NUM_SAMPLES", "16",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output_dir),
        *extra,
    ]
    return get_ebm_cfg("Synthetic/ebm_compact_fpn_synthetic.yaml", opts)


def load_train_net():
    """tools/train_net.py as a module (it is a script, as in Detectron2)."""
    spec = importlib.util.spec_from_file_location("ebm_train_net", REPO / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
