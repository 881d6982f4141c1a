"""`testbed train|eval|landscape`: help, one-line errors with exit status 2, a run end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiments.cli import main
from experiments.fewshot.toy import write_toy_folder


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return "folder:" + str(write_toy_folder(tmp_path_factory.mktemp("toy"), classes=5, per_class=5, size=16))


TINY = ["--ways", "3", "--queries", "2", "--hidden", "4", "--meta-batch", "2", "--iterations", "2",
        "--eval-episodes", "3", "--eval-inner-steps", "1", "--threads", "1", "--quiet"]


@pytest.mark.parametrize("command", ["train", "eval", "landscape"])
def test_help_explains_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage" in out and ("--source" in out or "--out" in out)


@pytest.mark.parametrize("argv, named", [
    (["train", "--ways", "0"], "--ways"),
    (["train", "--ways", "five"], "--ways"),
    (["train", "--ways", "1", "--out", "IGNORED"], "ways"),
    (["train", "--meta-lr", "-1"], "--meta-lr"),
    (["train", "--algorithm", "frobnicate"], "--algorithm"),
    (["train", "--swp-keep", "2", "--algorithm", "esharp"], "swp_keep"),
    (["train", "--alpha-up", "0.1", "--algorithm", "sharp-low"], "alpha_up"),
    (["eval", "/nonexistent/run"], "checkpoint not found: /nonexistent/run"),
    (["eval", "x", "--episodes", "0"], "--episodes"),
    (["landscape", "/nonexistent/ckpt.pt", "--out", "x.png"], "checkpoint not found"),
    (["landscape", "x", "--out", "x.png", "--span", "nan"], "--span"),
])
def test_bad_values_exit_2_with_one_line_naming_them(argv, named, capsys, tmp_path):
    argv = [str(tmp_path / "out") if a == "IGNORED" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_a_bad_source_spec_exits_2_naming_it(tmp_path, capsys):
    assert main(["train", "--source", "imagenet:/x", "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown source spec 'imagenet:/x'" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_missing_data_root_exits_2_naming_it(tmp_path, capsys):
    assert main(["train", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nowhere") in err[0]


def test_train_eval_landscape_end_to_end(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--source", toy, "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "95% CI" in printed
    assert main(["eval", str(out), "--episodes", "4", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["eval", str(out / "checkpoint.pt"), "--episodes", "4", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first
    assert main(["landscape", str(out), "--out", str(tmp_path / "l.png"), "--points", "3"]) == 0
    assert (tmp_path / "l.png").exists() and (tmp_path / "l.json").exists()
    # resume of a finished run with no options: settings come from the checkpoint
    assert main(["train", "--out", str(out), "--resume", "--quiet", "--eval-episodes", "0"]) == 0


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "eval", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "checkpoint not found" in proc.stderr
