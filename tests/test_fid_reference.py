"""FID that matches the reference, offline: torch-fidelity's Inception from a local file (or a message that names the
file, where to get it, fid.inception_path= and fid=null), real statistics cached per (dataset, split, extractor,
resolution, content), a corrupt cache rebuilt and kept aside, the real-vs-real floor and repeats over sample seeds."""

import warnings
from pathlib import Path

import pytest
import torch

from vdmlab.cache import atomic_save
from vdmlab.cli.build import build_run
from vdmlab.cli.validate import ConfigError, validate_config
from vdmlab.data import DigitsDataModule
from vdmlab.metrics import fid as F
from vdmlab.metrics.fid import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    FIDMetric,
    InceptionFeatures,
    InceptionWeightsNotFoundError,
    split_fid,
)


def test_missing_weights_message_names_file_url_option_and_fid_null(tmp_path):
    with pytest.raises(InceptionWeightsNotFoundError) as info:
        FIDMetric(feature=2048, inception_path=tmp_path / INCEPTION_WEIGHTS_FILE)
    message = str(info.value)
    for part in (INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_URL, "fid.inception_path=", "fid=null"):
        assert part in message


def test_missing_weights_stop_a_run_before_training(make_config, tmp_path):
    """At start-up validation (a given path) or module construction (the hub cache), before any training step."""
    cfg = make_config(["dataset=image_folder", f"dataset.root={tmp_path}", f"fid.inception_path={tmp_path / 'none.pth'}"])
    with pytest.raises(ConfigError, match=r"fid.inception_path=.*none.pth.*is not a file.*fid=null"):
        validate_config(cfg)
    with pytest.raises(Exception, match="fid=null"):  # Hydra wraps the InceptionWeightsNotFoundError of the module
        build_run(cfg)
    validate_config(make_config(["fid.inception_path=/nowhere.pth"]))  # the digits use their own classifier


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory) -> Path:
    """A state dict of torch-fidelity's FeatureExtractorInceptionV3 with random weights (the real ones cannot be
    downloaded here): the architecture and keys of the reference file."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    cls = tf_inception.FeatureExtractorInceptionV3
    original_load, original_url = cls.load_state_dict, tf_inception.load_state_dict_from_url
    cls.load_state_dict = lambda self, state_dict, *a, **k: None
    tf_inception.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict, tf_inception.load_state_dict_from_url = original_load, original_url
    path = tmp_path_factory.mktemp("weights") / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return path


def test_inception_loads_a_local_weights_file_and_gives_2048_features(random_inception_file):
    extractor = InceptionFeatures(2048, random_inception_file)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    features = extractor(x)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    gray = extractor(x[:, :1])  # grayscale is repeated to 3 channels
    assert gray.shape == (2, 2048)


@pytest.fixture
def digits():
    dm = DigitsDataModule(batch_size=32, eval_batch_size=None, num_workers=0)
    dm.setup()
    return dm


def fake_fid_from(metric, images):
    def fake(repeat):
        metric.reset()
        metric.update(images[repeat % len(images)], real=False)
        return metric.compute_dict()
    return fake


def test_real_statistics_are_cached_and_not_recomputed(digits, tmp_path, monkeypatch):
    noise = [torch.rand(64, 1, 8, 8) * 2 - 1]
    metric = FIDMetric("digits", reset_real_features=False)
    first = split_fid(metric, digits, "test", fake_fid_from(metric, noise), tmp_path, floor=False)
    files = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert len(files) == 1 and files[0].startswith("DigitsDataModule-test-digits64-1x8x8-")
    calls = []
    monkeypatch.setattr(FIDMetric, "update_from_dataset", lambda self, *a, **k: calls.append(1))
    again = FIDMetric("digits", reset_real_features=False)
    second = split_fid(again, digits, "test", fake_fid_from(again, noise), tmp_path, floor=False)
    assert not calls  # loaded from the cache
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-9) and second["fid_n_real"] == len(digits.test_set)


def test_a_different_split_or_content_gets_its_own_cache(digits, tmp_path):
    metric = FIDMetric("digits", reset_real_features=False)
    split_fid(metric, digits, "test", fake_fid_from(metric, [torch.zeros(8, 1, 8, 8)]), tmp_path, floor=False)
    other = FIDMetric("digits", reset_real_features=False)
    split_fid(other, digits, "val", fake_fid_from(other, [torch.zeros(8, 1, 8, 8)]), tmp_path, floor=False)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    changed = F.dataset_fingerprint(torch.utils.data.Subset(digits.test_set, range(10)))
    assert changed != F.dataset_fingerprint(digits.test_set)


def test_corrupt_cache_is_rebuilt_with_a_warning_and_kept_aside(digits, tmp_path):
    noise = [torch.rand(64, 1, 8, 8) * 2 - 1]
    metric = FIDMetric("digits", reset_real_features=False)
    good = split_fid(metric, digits, "test", fake_fid_from(metric, noise), tmp_path, floor=False)
    (cache,) = tmp_path.glob("*.pt")
    cache.write_bytes(b"not a torch file")
    again = FIDMetric("digits", reset_real_features=False)
    with pytest.warns(UserWarning, match="FID statistics cache.*unusable.*moved it to"):
        rebuilt = split_fid(again, digits, "test", fake_fid_from(again, noise), tmp_path, floor=False)
    assert rebuilt["fid"] == pytest.approx(good["fid"], rel=1e-9)
    aside = cache.with_name(cache.name + ".corrupt-0")
    assert aside.read_bytes() == b"not a torch file" and cache.is_file()  # the old file is not lost
    # a file of the right format but the wrong content (another key) is not used either
    stats = torch.load(cache, weights_only=True)
    atomic_save({**stats, "key": "something-else"}, cache)  # with its checksum: only the key is wrong
    with pytest.warns(UserWarning, match="does not match the key"):
        assert F.load_stats(cache, stats["key"]) is None


def test_floor_and_repeats(digits, tmp_path):
    noise = [torch.rand(100, 1, 8, 8) * 2 - 1 for _ in range(3)]
    metric = FIDMetric("digits", reset_real_features=False)
    values = split_fid(metric, digits, "test", fake_fid_from(metric, noise), tmp_path, repeats=3, floor=True)
    assert values["fid_repeats"] == 3 and values["fid_std"] > 0 and values["fid_n"] == 100
    assert values["fid_floor_n"] == 100
    assert 0 < values["fid_floor"] < values["fid"]  # real train images are closer to the test split than noise
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the floor is cached: a second call reads it back without recomputing
        again = FIDMetric("digits", reset_real_features=False)
        second = split_fid(again, digits, "test", fake_fid_from(again, noise), tmp_path, repeats=1, floor=True)
    assert second["fid_floor"] == pytest.approx(values["fid_floor"], rel=1e-9)
    assert len(list(tmp_path.glob("*floor100*.pt"))) == 1


def test_training_run_logs_fid_with_floor(make_config):
    from vdmlab.cli.train import run

    cfg = make_config(["trainer.max_epochs=1", "model.width=16", "model.num_res_blocks=1", "fid.num_samples=50",
                       "fid.steps=4", "fid.repeats=2", "logger=csv", "callbacks.sample_grid.num_samples=4", "sampler.steps=4"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"test/fid", "test/fid_n", "test/fid_std", "test/fid_floor", "test/fid_floor_n"} <= set(header)
    assert list(Path(cfg.fid.stats_dir).glob("DigitsDataModule-test-digits64-*.pt"))
