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
    # configs/ ships as the data package ebm_refine.configs, so shipped configs (and their relative
    # _BASE_ links, which stay inside configs/) work from an installed copy; see ebm_config_path().
    packages=find_packages(include=["ebm_refine", "ebm_refine.*"]) + ["ebm_refine.configs"],
    package_dir={"ebm_refine.configs": "configs"},
    package_data={"ebm_refine.configs": ["*.yaml", "*/*.yaml", "*/*/*.yaml"]},
    install_requires=[
        # torch is not pinned here: users bring their own CUDA build. tools/setup_env.sh pins 2.14.1.
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy<2",  # Detectron2 0.6/0.7 is not numpy-2 clean
        "scipy",
        "tqdm",
        "matplotlib",
        "opencv-python-headless",
        "pycocotools",
        "pyyaml",
    ],
    extras_require={
        # Detectron2 is not on PyPI under its own name; see README for the install routes.
        "dev": ["pytest", "pytest-timeout", "got10k", "six"],
    },
    entry_points={},
)
