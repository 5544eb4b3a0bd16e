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



@pytest.mark.slow
def test_eval_scaling_quick(tmp_path):
    from benchmarks import eval_scaling as E

    out = tmp_path / "e.json"
    E.main(["--quick", "--device", "cpu", "--samples", "synthetic", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    fid_rows = [r for r in rows if r["what"].startswith("FID")]
    assert [r["n"] for r in fid_rows] == [60, 200] and all(r["fid_n"] == r["n"] for r in fid_rows)
    assert [r["kept_features"] for r in fid_rows] == [60, 100]  # the reservoir caps the features at --subset
    assert all(common.finite(r["bpd"]) and r["bpd"] > 0 for r in rows if r["what"] == "bits/dim")


@pytest.mark.slow
def test_image_folder_scale_quick_rebuilds_the_cache_after_a_change(tmp_path):
    from benchmarks import image_folder_scale as F

    out = tmp_path / "f.json"
    payload = F.main(["--quick", "--device", "cpu", "--out", str(out)])
    assert payload["changed_file_rebuilt_cache"] is True
    first, reload, changed = payload["rows"]
    assert first["images"] == reload["images"] == changed["images"] == 600
    assert first["cache_file"] == reload["cache_file"] != changed["cache_file"]
