"""Importing the plugin prints none of Detectron2's and fvcore's torch.jit deprecation warnings (they appeared
twice on every command), and torch.jit.script used afterwards still warns: the filter covers that import only."""
import subprocess
import sys

CHECK = """
import warnings
warnings.simplefilter("always")
import ebm_refine.detectron2
import torch


def plus_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


torch.jit.script(plus_one)
"""


def test_plugin_import_is_quiet_and_later_jit_warnings_stay(tmp_path):
    script = tmp_path / "check.py"  # a file: torch.jit.script reads the function's source
    script.write_text(CHECK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [line for line in proc.stderr.splitlines() if "`torch.jit.script` is deprecated" in line]
    assert len(warned) == 1, proc.stderr  # the script's own call, not the two at import
