"""ebm_refine.utils: atomic writes, the command-line error convention, shipped resources."""
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from ebm_refine.utils import UserError, atomic_save_torch, atomic_write_text, atomic_writer, resource_path
from ebm_refine.utils.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_cli, user_message
from ebm_refine.utils.resources import MissingResourceError, list_resources


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "complete\n")
    with pytest.raises(RuntimeError):
        with atomic_writer(path) as fh:
            fh.write("half")
            raise RuntimeError("killed while writing")
    assert path.read_text() == "complete\n"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left behind


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_save_torch({"w": torch.ones(2)}, tmp_path / "b.pth")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pth"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
    assert torch.load(tmp_path / "b.pth")["w"].tolist() == [1.0, 1.0]


def test_user_messages_name_the_file():
    assert user_message(UserError("cfg.yaml: key 'a' unknown")) == "cfg.yaml: key 'a' unknown"
    assert user_message(FileNotFoundError(2, "No such file or directory", "/x/y.txt")) == \
        "/x/y.txt: No such file or directory"
    assert user_message(ZeroDivisionError("bug")) is None


def test_run_cli_one_line_for_user_errors_traceback_for_bugs(capsys, monkeypatch):
    monkeypatch.delenv("EBM_DEBUG", raising=False)

    def bad_input(argv):
        raise UserError("data.json: no images; pass --images")

    assert run_cli(bad_input, [], prog="tool") == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err == "tool: error: data.json: no images; pass --images\n"
    with pytest.raises(UserError):  # --debug shows the traceback
        run_cli(bad_input, ["--debug"], prog="tool")
    with pytest.raises(ZeroDivisionError):  # a bug is never swallowed
        run_cli(lambda argv: 1 / 0, [], prog="tool")

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_cli(interrupted, [], prog="tool") == EXIT_INTERRUPTED
    assert run_cli(lambda argv: 3, []) == 3 and run_cli(lambda argv: None, []) == 0


def test_run_cli_in_a_real_process(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(textwrap.dedent("""
        import sys
        from ebm_refine.utils.cli import run_cli
        def main(argv):
            open("/nonexistent/input.txt")
        sys.exit(run_cli(main))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env={**os.environ, "EBM_DEBUG": ""})
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr.strip() == "tool.py: error: /nonexistent/input.txt: No such file or directory"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env={**os.environ, "EBM_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_shipped_resources():
    assert resource_path("configs/tracking/ebm.yaml").is_file()
    assert "tracking/ebm.yaml" in list_resources("configs", "*.yaml")
    with pytest.raises(MissingResourceError, match="no shipped file 'configs/nope.yaml'"):
        resource_path("configs/nope.yaml")
    with pytest.raises(ValueError):
        resource_path("../setup.py")


def test_weights_file_names_are_looked_up_in_the_weights_folder(tmp_path, monkeypatch):
    from ebm_refine.utils.resources import find_weights

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "w.onnx").write_bytes(b"x")
    monkeypatch.setenv("EBM_WEIGHTS_DIR", str(folder))
    monkeypatch.chdir(tmp_path)
    assert find_weights("w.onnx") == str(folder / "w.onnx")
    assert find_weights("absent.onnx") == str(folder / "absent.onnx")  # the caller names both places
    (tmp_path / "w.onnx").write_bytes(b"y")  # a file in the current folder wins
    assert find_weights("w.onnx") == "w.onnx"
    for kept in ("", "/abs/w.onnx", "https://host/w.pth", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"):
        assert find_weights(kept) == kept
