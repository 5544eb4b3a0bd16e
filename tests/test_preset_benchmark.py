"""benchmarks/preset_networks.py: its Hydra-free mirror of the preset networks is the composed configs', and its
--quick mode on CPU writes a row per preset with a finite step time and memory (GPU rows marked not measured)."""

import json
import sys

import pytest
from conftest import REPO
from hydra.utils import instantiate

sys.path.insert(0, str(REPO))
from benchmarks import preset_networks  # noqa: E402


@pytest.mark.parametrize("preset", list(preset_networks.PRESETS))
def test_mirror_matches_the_composed_preset(preset, make_config):
    cfg = make_config([f"experiment={preset}", "fid=null"])
    spec = preset_networks.PRESETS[preset]
    composed = instantiate(cfg.model, data_shape=spec["data_shape"])
    mirror = preset_networks.build_net(preset)
    assert tuple(cfg.preset.data_shape) == spec["data_shape"] and cfg.dataset.batch_size == spec["batch"]
    assert {k: tuple(v.shape) for k, v in composed.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in mirror.state_dict().items()}
    assert repr(composed) == repr(mirror)


@pytest.mark.slow
def test_quick_cpu_run_writes_rows(tmp_path):
    out = tmp_path / "preset_networks.json"
    preset_networks.main(["--quick", "--device", "cpu", "--presets", "mnist", "--out", str(out)])
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert payload["benchmark"] == "preset_networks" and payload["quick"] is True
    cpu = [r for r in rows if r["precision"] == "32-true" and "steps_per_s" in r]
    assert len(cpu) == 1 and cpu[0]["steps_per_s"] > 0 and cpu[0]["peak_memory_mib"] > 0
    assert cpu[0]["params"] == sum(p.numel() for p in preset_networks.build_net("mnist").parameters())
    assert [r["precision"] for r in rows if "not measured" in r["note"]] == ["32-true", "bf16-mixed"]
    assert out.with_suffix(".md").read_text().count("| mnist |") == 3
