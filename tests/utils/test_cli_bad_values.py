"""Every command line (``tools/*.py``, ``demo/demo.py``) keeps the one-line-error promise for bad values.

The tools are discovered, not listed, so a new tool is checked too. Their parsers are captured in-process
(``--help`` is never printed: ``ArgumentParser.parse_args`` is intercepted on its first call), and:

* statically, no option takes a plain ``int`` / ``float`` (any count, NaN or infinity would pass) and every
  option named like an output (``--json``, ``--output``, ...) is checked as one before the work starts;
* dynamically, each option with a checked type gets a bad value of its kind (``0`` / ``-1`` for counts, ``nan``
  for numbers, a missing file, an output below a file, an unregistered Detectron2 dataset) and the command
  must end with one line on stderr, no traceback, exit status 2, before any work.
"""
import argparse
import importlib.util
import math
from pathlib import Path

import pytest

from ebm_refine.utils import cli_args

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(REPO.glob("tools/*.py")) + [REPO / "demo" / "demo.py"]
# Option names that hold an output path: they must be checked before the work (output_file / _folder / _path).
OUTPUT_OPTIONS = {"--json", "--output", "--out", "--report", "--per-box-errors", "--png", "--errors", "--report-dir",
                  "--pack-trackingnet", "--results", "--work"}
OUTPUT_TYPES = (cli_args.output_file, cli_args.output_folder, cli_args.output_path)


class _Captured(BaseException):
    """Raised from ``parse_args`` to hand the parser out (a BaseException: run_cli lets it through)."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def _entry(path: Path):
    """The script's command function: ``main(argv)`` run under run_cli, or a shim's ``command(argv)``."""
    spec = importlib.util.spec_from_file_location(f"cli_under_test_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "command"):
        return module.command
    from ebm_refine.utils.cli import run_cli

    return lambda argv: run_cli(module.main, argv, prog=path.name)


@pytest.fixture(scope="module")
def clis():
    """name -> (entry, [(subcommand or None, parser)])"""
    found = {}
    original = argparse.ArgumentParser.parse_args
    for path in SCRIPTS:
        entry = _entry(path)

        def capture(self, *args, **kwargs):
            raise _Captured(self)

        argparse.ArgumentParser.parse_args = capture
        try:
            entry(["--help"])
        except _Captured as c:
            parser = c.parser
        else:  # pragma: no cover - a tool that parses nothing
            pytest.fail(f"{path.name}: no argparse parser found")
        finally:
            argparse.ArgumentParser.parse_args = original
        parsers = [(None, parser)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += [(name, sub) for name, sub in action.choices.items()]
        found[path.name] = (entry, parsers)
    return found


def _options(parsers):
    for sub, parser in parsers:
        for action in parser._actions:
            if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                yield sub, action


def test_every_tool_is_discovered(clis):
    assert len(clis) >= 25 and {"refine_detections.py", "train_net.py", "demo.py", "tune_refinement.py"} <= set(clis)


def test_no_option_takes_an_unchecked_number_or_output(clis):
    unchecked = []
    for name, (_, parsers) in clis.items():
        for sub, action in _options(parsers):
            where = f"{name} {sub + ' ' if sub else ''}{action.option_strings[-1]}"
            if action.type in (int, float):
                unchecked.append(f"{where}: type={action.type.__name__} (use ebm_refine.utils.cli_args)")
            if set(action.option_strings) & OUTPUT_OPTIONS and action.type not in OUTPUT_TYPES:
                unchecked.append(f"{where}: an output path not checked before the work (type=output_file / ...)")
    assert not unchecked, "\n".join(unchecked)


def _bad_values(action, tmp_path):
    """(kind, value) pairs this option must refuse, from its checked type."""
    t = action.type
    if t in OUTPUT_TYPES:
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        return [("output below a file", str(blocker / "sub" / "out.json"))]
    if t is cli_args.existing_file:
        return [("missing file", str(tmp_path / "missing.json"))]
    if t is cli_args.existing_folder:
        return [("missing folder", str(tmp_path / "missing_dir"))]
    if t is cli_args.detectron2_dataset:
        return [("unregistered dataset", "no_such_dataset_xyz")]
    name = getattr(t, "__name__", "")
    if name.startswith("integer"):
        return [("below the range", "-1"), ("not an integer", "abc")]
    if name in ("finite number", "number list"):
        return [("nan", "nan"), ("not a number", "1,abc" if name == "number list" else "abc")]
    return []


def _argv(sub, action, value):
    """The command line giving ``action`` the bad ``value`` (every one of its values, for ``nargs=N``)."""
    count = action.nargs if isinstance(action.nargs, int) else 1
    return ([sub] if sub else []) + [action.option_strings[-1]] + [value] * count


def test_bad_values_of_every_kind_are_one_line(clis, tmp_path, capsys):
    checked, failures = set(), []
    for name, (entry, parsers) in clis.items():
        for sub, action in _options(parsers):
            for kind, value in _bad_values(action, tmp_path):
                argv = _argv(sub, action, value)
                try:
                    status = entry(argv)
                except SystemExit as e:  # pragma: no cover - reported below
                    status = e.code
                err = capsys.readouterr().err
                lines = [line for line in err.splitlines() if line.strip()]
                names_it = len(lines) == 1 and any(f"argument {o}" in lines[0] for o in action.option_strings)
                if status != 2 or not names_it or "Traceback" in err or ": error: " not in lines[0]:
                    failures.append(f"{name} {' '.join(argv)} ({kind}): exit {status}, stderr {err[-300:]!r}")
                checked.add(kind)
    assert not failures, "\n".join(failures)
    # Each case class was exercised somewhere.
    assert checked >= {"output below a file", "missing file", "unregistered dataset", "below the range", "nan",
                       "not an integer", "not a number"}, checked


def test_threads_zero_and_nan_are_refused_where_they_exist(clis, capsys):
    """The issue's own examples, by name: --threads 0 and a NaN float, for every tool that has them."""
    seen = 0
    for name, (entry, parsers) in clis.items():
        for sub, action in _options(parsers):
            bad = {"--threads": "0"}.get(action.option_strings[-1])
            if bad is None and getattr(action.type, "__name__", "") == "finite number":
                bad = str(math.nan)
            if bad is None or (action.option_strings[-1] == "--threads" and action.type is cli_args.non_negative_int):
                continue  # the micro-benchmarks take --threads 0 as "torch's default"
            seen += 1
            status = entry(_argv(sub, action, bad))
            err = capsys.readouterr().err.strip().splitlines()
            assert status == 2 and len(err) == 1 and "must be" in err[0], (name, action.option_strings, err)
    assert seen >= 15
