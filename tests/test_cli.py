"""The command line: help everywhere, one-line errors with exit status 2, the demo runs."""

import json
import os
import subprocess
import sys

import pytest

from experiments.cli import main


def test_demo_prints_every_algorithm_and_matches_the_closed_form(capsys):
    assert main(["demo", "--dim", "2", "--tasks", "2", "--iterations", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [r["algorithm"] for r in out["rows"]]
    assert names == ["maml", "fomaml", "sharp-low", "sharp-up", "sharp-both"]
    assert all(r["closed_form_error"] <= 1e-10 for r in out["rows"])


def test_demo_table_on_the_nonconvex_family(capsys):
    assert main(["demo", "--family", "tanh", "--dim", "2", "--tasks", "2", "--iterations", "2",
                 "--inner-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "tanh family" in out and "sharp-both" in out


@pytest.mark.parametrize("argv, named", [
    (["demo", "--dim", "0"], "--dim"),
    (["demo", "--alpha-low", "-1"], "--alpha-low"),
    (["demo", "--beta-low", "nan"], "--beta-low"),
    (["demo", "--iterations", "ten"], "--iterations"),
    (["demo", "--family", "cubic"], "--family"),
    (["demo", "--seed", "-3"], "--seed"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_values_exit_2_with_one_line_naming_the_value(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_installed_command_reports_errors_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "demo", "--tasks", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--tasks" in proc.stderr


def test_an_unwritable_out_is_one_line_and_exit_2_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for argv in (["verify", "--quick", "--only", "eq30", "--out", str(blocker / "sub")],
                 ["bench", "synthetic", "--out", str(blocker / "sub")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Not a directory" in err[0] and str(blocker) in err[0]


def test_sizes_too_large_for_memory_are_one_line_and_exit_2(capsys):
    assert main(["demo", "--dim", "100000000", "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0]


def test_thread_count_is_bounded_by_the_machine():
    import argparse
    import os

    from experiments.cliutil import thread_count

    assert thread_count("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="per core"):
        thread_count(str(4 * (os.cpu_count() or 1) + 1))
    with pytest.raises(argparse.ArgumentTypeError):
        thread_count("0")


def test_reports_are_readable_by_others_not_0600(tmp_path):
    from proofs_check.report import atomic_write

    atomic_write(tmp_path / "r.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask
