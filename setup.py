"""ebm_refine: energy-based bounding-box refinement for detection (Detectron2 plugin) and tracking."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _version() -> str:
    for line in (ROOT / "ebm_refine" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("__version__ not found")


setup(
    name="ebm_refine",
    version=_version(),
    description="Energy-based models for bounding-box regression (Gustafsson et al., ECCV 2020): "
    "Detectron2 ROI head, ATOM-style tracker, demos.",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # configs/ (Detectron2 configs, tracker parameter files) and checkpoints/ (the shipped tracker
    # networks and detection heads of ebm_refine.detectron2.model_zoo) are installed into the package as
    # ebm_refine/configs and ebm_refine/checkpoints, so an installed copy finds them
    # (ebm_refine.utils.resources); _BASE_ links stay inside configs/.
    packages=find_packages(include=["ebm_refine", "ebm_refine.*"]) + ["ebm_refine.configs", "ebm_refine.checkpoints"],
    package_dir={"ebm_refine.configs": "configs", "ebm_refine.checkpoints": "checkpoints"},
    package_data={
        "ebm_refine.configs": ["*.yaml", "*/*.yaml", "*/*/*.yaml"],
        "ebm_refine.checkpoints": ["*/*/net.pth", "*/*/config.yaml", "*/*/log.jsonl", "detection/*/model_final.pth"],
    },
    install_requires=[
        # torch is not pinned here: users bring their own CUDA build. tools/setup_env.sh pins 2.14.1.
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy<2",  # Detectron2 0.6/0.7 is not numpy-2 clean
        "scipy",
        "tqdm",
        "matplotlib",
        # contrib: OpenCV's CSRT / KCF / NanoTrack trackers are peers in every tracking table. It provides the
        # same cv2 module as opencv-python-headless; install only one of the two.
        "opencv-contrib-python-headless",
        "pycocotools",
        "pyyaml",
    ],
    extras_require={
        # Detectron2 is not on PyPI under its own name; see README for the install routes.
        "dev": ["pytest", "pytest-timeout", "got10k", "six", "onnx", "onnxruntime"],
        # Reading COCO-trained detectors from their ONNX exports (tools/convert_yolox_onnx.py) and
        # checking the PyTorch port against onnxruntime.
        "onnx": ["onnx", "onnxruntime"],
    },
    # One command with subcommands (ebm-refine demo | eval-tracking | train-tracker | train-net |
    # refine-detections), like `detectron2`'s tools but installed; ebm_refine/cli/__init__.py lists them.
    entry_points={"console_scripts": ["ebm-refine = ebm_refine.cli:main"]},
)
