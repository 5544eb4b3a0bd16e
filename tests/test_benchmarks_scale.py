"""The real-scale benchmarks in --quick mode on CPU: vdmlab's ddpm_cifar10 U-Net against diffusers' UNet2DModel of the
same architecture (equal parameter counts at any width), the evaluation-scaling and image-folder benchmarks."""

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks import common  # noqa: E402

diffusers = pytest.importorskip("diffusers")


@pytest.mark.slow
def test_ddpm_cifar10_network_and_diffusers_unet_have_the_same_parameter_count_at_full_size():
    from benchmarks import unet_vs_diffusers as U

    counts = {arm: U.parameters(U.build(arm)) for arm in U.ARMS}
    assert counts["vdmlab"] == counts["diffusers"] == 35_746_307  # Ho et al.'s 35.7 M


def test_unet_vs_diffusers_quick(tmp_path):
    from benchmarks import unet_vs_diffusers as U

    out = tmp_path / "u.json"
    U.main(["--quick", "--device", "cpu", "--threads", "1", "--no-memory", "--options", "32-true", "channels_last",
            "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == U.NAME and payload["quick"] and payload["params"]["vdmlab"] == payload["params"]["diffusers"]
    options = [row["option"] for row in payload["rows"]]
    assert options[:2] == ["32-true", "channels_last"]
    for row in payload["rows"]:
        assert all(common.finite(row[k]) and row[k] > 0 for k in ("vdmlab_s", "diffusers_s", "ratio")), row
        assert len(row["times"]["vdmlab"]) == len(row["times"]["diffusers"]) == row["pairs"]
    assert payload["vdmlab_fastest"] in options
    assert (len(payload["rows"]) == 3) == (payload["vdmlab_fastest"] != "32-true")  # then paired with diffusers' eager

