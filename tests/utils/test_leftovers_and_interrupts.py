"""No leftovers after SIGKILL (atomic writes, lock files, temporary folders) and Ctrl-C at any moment is one
line with exit status 130 saying what was kept."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebm_refine.utils.cli import run_cli
from ebm_refine.utils.fileio import (atomic_write_text, file_lock, finished_writes, remove_stale_locks,
                                     remove_stale_temp_files, temporary_folder)

REPO = Path(__file__).resolve().parents[2]

# A writer that is killed (SIGKILL) in the middle of an atomic write, holding a lock and a temporary folder.
KILLED_WRITER = """
import sys, time
from ebm_refine.utils.fileio import atomic_writer, file_lock, temporary_folder
out = sys.argv[1]
with file_lock(out + "/.Seq.lock", blocking=False, remove=True), temporary_folder("ebm_refine-test-") as tmp:
    with atomic_writer(out + "/result.json") as fh:
        fh.write("partial"); fh.flush()
        print(tmp, flush=True)
        time.sleep(120)
"""


def _start_killed_writer(folder: Path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    tmp = proc.stdout.readline().strip()
    assert tmp, "the writer did not start"
    return proc, Path(tmp)


def test_a_killed_writers_temporary_files_lock_and_folder_are_removed_by_the_next_run(tmp_path):
    proc, tmp_folder = _start_killed_writer(tmp_path)
    try:
        temp_files = sorted(p.name for p in tmp_path.glob(".result.json.*.tmp"))
        assert len(temp_files) == 1 and (tmp_path / ".Seq.lock").exists() and tmp_folder.is_dir()
        # While the writer lives, nothing of it is touched: its files are held.
        atomic_write_text(str(tmp_path / "result.json"), "other writer")
        assert remove_stale_locks(str(tmp_path)) == 0 and remove_stale_temp_files(str(tmp_path)) == 0
        with temporary_folder("ebm_refine-test-"):
            pass
        assert sorted(p.name for p in tmp_path.glob(".result.json.*.tmp")) == temp_files and tmp_folder.is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Killed: the next write to the same target, the runner's sweep and the next temporary folder clean up.
    atomic_write_text(str(tmp_path / "result.json"), "complete")
    assert not list(tmp_path.glob(".result.json.*.tmp")) and (tmp_path / "result.json").read_text() == "complete"
    assert remove_stale_locks(str(tmp_path)) == 1 and not (tmp_path / ".Seq.lock").exists()
    with temporary_folder("ebm_refine-test-") as fresh:
        assert os.path.isdir(fresh) and not tmp_folder.exists()
    assert not os.path.exists(fresh)
    # A lock held by this process is not stale.
    with file_lock(str(tmp_path / ".mine.lock")):
        assert remove_stale_locks(str(tmp_path)) == 0


def test_ctrl_c_says_which_outputs_were_kept(tmp_path, capsys):
    before, _ = finished_writes()

    def main(argv):
        atomic_write_text(str(tmp_path / "a.json"), "{}")
        raise KeyboardInterrupt

    assert run_cli(main, [], prog="tool.py") == 130
    line = capsys.readouterr().err.strip()
    assert line == (f"tool.py: interrupted; kept the {before + 1} output file(s) finished before it (last: "
                    f"{tmp_path / 'a.json'}); the file being written, if any, was discarded, so no output is partial")


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_the_imports_load_is_one_line(sig, status, word):
    """Ctrl-C (or SIGTERM) while a tool is still importing torch and Detectron2: exit 130 (143), one line."""
    script = ("import sys, time\n"
              "from ebm_refine.utils.cli import exit_on_interrupt_while_starting\n"
              "exit_on_interrupt_while_starting()\n"
              "print('importing', flush=True)\n"
              "time.sleep(60)  # stands for the seconds of 'import torch, detectron2'\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "importing"
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status and err == f"-c: {word} while starting; nothing was written\n"


def test_sigterm_inside_main_cleans_up_like_ctrl_c(tmp_path, capsys):
    def main(argv):
        with temporary_folder("ebm_refine-test-") as tmp:
            (Path(tmp) / "x").write_text("x")
            main.tmp = tmp
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here

    assert run_cli(main, [], prog="tool.py") == 143
    assert not os.path.exists(main.tmp)
    assert capsys.readouterr().err.startswith("tool.py: terminated")
