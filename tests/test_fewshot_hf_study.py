"""HF-MAML's finite difference on Conv-4: O(delta^2) on a smooth network, not across ReLU kinks."""

import pytest

from experiments.fewshot import hf_study as H

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smooth_control_converges_like_delta_squared_and_relu_conv4_does_not():
    r = H.relative_errors(4, tasks=2, seeds=(0,), deltas=(1e-2, 1e-3))
    smooth = r["smooth control (softplus, avg-pool)"]["meta-batch"]
    relu = r["conv4 (ReLU, max-pool)"]["meta-batch"]
    assert smooth[1e-3][0] < smooth[1e-2][0] / 50          # delta^2: 100x per decade
    assert smooth[1e-2][0] < 1e-2
    # differences across ReLU / max-pool kinks: errors of order one, not O(delta^2)
    assert relu[1e-2][0] > 100 * smooth[1e-2][0] and relu[1e-3][0] > 0.1
    assert len(r["conv4 (ReLU, max-pool)"]["per task"][1e-2]) == 2
    # on the smooth network the difference beats dropping the Hessian term; on Conv-4 it does not
    assert smooth[1e-3][0] < r["smooth control (softplus, avg-pool)"]["first order"][0] / 100
    assert relu[1e-3][0] > r["conv4 (ReLU, max-pool)"]["first order"][0]


def test_cli_writes_tables_and_rejects_bad_values(tmp_path, capsys):
    assert H.main(["--out", str(tmp_path), "--hidden", "2", "--seeds", "1", "--dtypes", "float64"]) == 0
    assert (tmp_path / "hf_maml_conv4.json").is_file()
    assert "smooth control" in (tmp_path / "hf_maml_conv4.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        H.main(["--out", str(tmp_path), "--hidden", "0"])
    assert exit_.value.code == 2 and "--hidden" in capsys.readouterr().err
