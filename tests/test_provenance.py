"""The one git-commit helper every result file records."""

import subprocess

import pytest

from experiments.provenance import git_commit


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(root), "PATH": "/usr/bin:/bin"})


def test_commit_is_head_then_dirty_after_a_tracked_change_and_none_outside_git(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    try:
        _git(repo, "init", "-q")
        (repo / "a.txt").write_text("1\n")
        _git(repo, "add", "a.txt")
        _git(repo, "commit", "-q", "-m", "first")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no usable git here")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert git_commit(repo) == head
    (repo / "untracked.txt").write_text("ignored\n")        # untracked files do not count
    assert git_commit(repo) == head
    (repo / "a.txt").write_text("2\n")
    assert git_commit(repo) == head + "+dirty"
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_commit(outside) is None                     # pytest's tmp_path is outside any repository
