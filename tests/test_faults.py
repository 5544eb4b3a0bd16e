"""Faults that must never cost earlier work: a full disk or a crash while writing a checkpoint or cache, a rename
across filesystems, two runs in one folder, ``ckpt_path=last`` with several runs, resuming with options that change
the model or the objective, and bad trainer counters. Each checks that nothing written earlier was lost."""

import builtins
import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config

import vdmlab.cache
from vdmlab.cache import DiskFullError, atomic_write_bytes
from vdmlab.cli.checkpoints import CheckpointError, load_checkpoint, resolve_ckpt_path
from vdmlab.cli.train import RunFolderLocked, lock_run_folder, run
from vdmlab.cli.validate import ConfigError

TINY = ["model.width=8", "model.num_res_blocks=1", "dataset.batch_size=128", "fid=null", "logger=csv", "test=false",
        "callbacks.sample_grid.every_n_epochs=1000", "callbacks.schedule_plot.every_n_epochs=1000",
        "sampler.steps=4", "callbacks.progress_bar.refresh_rate=0", "module.lr_scheduler.warmup_steps=5",
        "trainer.check_val_every_n_epoch=1", "trainer.deterministic=true"]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train(tmp_path: Path, name: str, *overrides: str) -> Path:
    cfg = compose_config(tmp_path / name, [*TINY, f"paths.log_dir={tmp_path / 'logs'}", *overrides])
    run(cfg)
    return Path(cfg.paths.output_dir)


def failing_open(after_bytes: int, calls_before_failure: int = 0):
    """An ``open`` whose binary writes raise ENOSPC once ``after_bytes`` were written (a disk that fills up),
    from the ``calls_before_failure``-th write-mode call on."""
    real_open, count = builtins.open, [0]

    class Full:
        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            if self.written + len(data) > after_bytes:
                self.file.write(data[:max(0, after_bytes - self.written)])
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def fake(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return file
        count[0] += 1
        return Full(file) if count[0] > calls_before_failure else file

    return fake


def test_full_disk_mid_write_is_a_clear_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    atomic_write_bytes(b"good" * 1000, target)
    monkeypatch.setattr(vdmlab.cache, "open", failing_open(after_bytes=1500), raising=False)
    with pytest.raises(DiskFullError) as error:
        atomic_write_bytes(b"new!" * 1_000_000, target)
    message = str(error.value)
    assert str(target.parent) in message and "3.8 MiB" in message and "untouched" in message
    assert target.read_bytes() == b"good" * 1000  # the previous file, intact
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no truncated temporary file


def test_full_disk_during_training_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A real run whose third checkpoint write hits a full disk: the error names the folder and the space, and the
    checkpoints written before are intact and resumable; no truncated file lies where a resume would pick it up."""
    run_dir = train(tmp_path, "first", "trainer.max_epochs=1")
    before = digest(run_dir / "checkpoints")
    monkeypatch.setattr(vdmlab.cache, "open", failing_open(after_bytes=10_000), raising=False)
    with pytest.raises(DiskFullError, match=f"no space left in {run_dir / 'checkpoints'}"):
        train(tmp_path, "resumed", "trainer.max_epochs=2", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    monkeypatch.undo()
    assert digest(run_dir / "checkpoints") == before
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 11
    assert not list(run_dir.rglob("*.partial")) and not (run_dir / ".run.lock").exists()


@pytest.mark.skipif(not (Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK)), reason="no /dev/shm")
def test_atomic_writes_rename_within_the_target_folder_across_filesystems(tmp_path, monkeypatch):
    """With the temporary folder (/tmp) and the target (/dev/shm) on different filesystems, the temporary file is
    made in the target's folder, so the rename never becomes a copy that a crash could cut short."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    target = Path("/dev/shm") / f"vdmlab-test-{os.getpid()}" / "last.ckpt"
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), real_replace(src, dst)))
    try:
        atomic_write_bytes(b"x" * 4096, target)
        atomic_write_bytes(b"y" * 4096, target)
        assert target.read_bytes() == b"y" * 4096
        assert all(src.parent == dst.parent == target.parent for src, dst in renames) and len(renames) == 2
    finally:
        for p in target.parent.glob("*"):
            p.unlink()
        target.parent.rmdir()


def test_two_runs_never_write_into_one_folder(tmp_path):
    lock = lock_run_folder(tmp_path / "run")
    with pytest.raises(RunFolderLocked, match=f"in use by another run \\(process {os.getpid()}"):
        lock_run_folder(tmp_path / "run")
    lock.unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run" / ".run.lock").write_text(f"{dead.pid} {os.uname().nodename}\n")
    assert lock_run_folder(tmp_path / "run") is not None  # a stale lock (its process is gone) is taken over


def test_ckpt_path_last_is_this_runs_checkpoint_and_lists_several_candidates(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "logs" / "train" / "runs" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "logs" / "train" / "runs" / name / "checkpoints" / "last.ckpt").write_bytes(b"x")
    cfg = compose_config(tmp_path / "new", [*TINY, f"paths.log_dir={tmp_path / 'logs'}", "ckpt_path=last"])
    with pytest.raises(CheckpointError) as error:
        resolve_ckpt_path(cfg)
    for name in ("a", "b"):
        assert f"resume_dir={tmp_path / 'logs' / 'train' / 'runs' / name}" in str(error.value)
    cfg = compose_config(tmp_path / "new", [*TINY, f"paths.log_dir={tmp_path / 'logs'}", "ckpt_path=last",
                                            f"resume_dir={tmp_path / 'elsewhere'}"])
    with pytest.raises(CheckpointError, match="no .*elsewhere/checkpoints/last.ckpt"):
        resolve_ckpt_path(cfg)


@pytest.mark.slow
def test_resume_with_options_that_change_the_model_or_objective_is_refused(tmp_path):
    run_dir = train(tmp_path, "first", "trainer.max_steps=3", "trainer.max_epochs=-1")
    before = digest(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError) as error:
        train(tmp_path, "second", f"ckpt_path={last}", "parameterization=v", "weighting=elbo", "trainer.max_steps=4",
              "trainer.max_epochs=-1")
    message = str(error.value)
    assert "parameterization._target_" in message and "weighting._target_" in message and "resume_check=false" in message
    assert "max_steps" not in message  # a harmless change is allowed
    with pytest.raises(CheckpointError, match=r"model.width: 8 -> 64"):
        train(tmp_path, "third", f"ckpt_path={last}", "model.width=64", "trainer.max_steps=4", "trainer.max_epochs=-1")
    assert digest(run_dir) == before  # nothing of the earlier run was touched
    train(tmp_path, "fourth", f"ckpt_path={last}", "parameterization=v", "trainer.max_steps=4", "trainer.max_epochs=-1",
          "resume_check=false")  # deliberately: fine-tune under the new parameterization
    assert load_checkpoint(last)["global_step"] == 4


@pytest.mark.parametrize("override,expected", [
    ("trainer.max_epochs=ten", "trainer.max_epochs='ten' is invalid: it must be an integer >= 1 or -1 or null"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is invalid (a run that trains nothing)"),
    ("trainer.max_steps=0", "trainer.max_steps=0 is invalid (a run that trains nothing)"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5 is invalid"),
])
def test_bad_trainer_counters_are_named(tmp_path, override, expected):
    cfg = compose_config(tmp_path / "run", [*TINY, f"paths.log_dir={tmp_path / 'logs'}", override])
    with pytest.raises(ConfigError) as error:
        run(cfg)
    assert expected in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("override,expected", [("trainer.max_epochs=ten", "trainer.max_epochs='ten' is invalid"),
                                               ("trainer=gpu", "cannot start on this machine")])
def test_a_failed_start_shows_the_message_and_leaves_no_folder(tmp_path, override, expected):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([sys.executable, "train.py", override, f"paths.log_dir={tmp_path}"], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*"))  # no run folder
    full = subprocess.run([sys.executable, "train.py", override, f"paths.log_dir={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**env, "HYDRA_FULL_ERROR": "1"})
    assert "Traceback" in full.stderr and expected in full.stderr


def test_a_cached_statistics_file_with_changed_bytes_is_rebuilt(tmp_path):
    """8 bytes changed inside a cached FID-statistics file (a value, not the structure): the checksum catches it,
    the file is moved aside (kept, never deleted) and the caller is told to rebuild it."""
    from vdmlab.cache import checksum_path
    from vdmlab.metrics.fid import load_stats, save_stats

    path = tmp_path / "stats" / "digits-test.pt"
    save_stats(path, "k", torch.arange(4.0), torch.eye(4), 10)
    assert checksum_path(path).is_file() and load_stats(path, "k")["n"] == 10
    data = bytearray(path.read_bytes())
    cov = torch.eye(4, dtype=torch.float64).numpy().tobytes()
    at = bytes(data).find(cov)  # the stored covariance's bytes: change one float64 of it, still finite
    assert at > 0
    data[at + 8: at + 16] = torch.tensor([3.0], dtype=torch.float64).numpy().tobytes()
    path.write_bytes(bytes(data))
    assert float(torch.load(path, weights_only=True)["cov_sum"][0, 1]) == 3.0  # a silently different value
    with pytest.warns(UserWarning, match="SHA-256 does not match"):
        assert load_stats(path, "k") is None  # rebuild
    assert not path.exists() and (tmp_path / "stats" / "digits-test.pt.corrupt-0").is_file()


@pytest.mark.slow
def test_a_divergence_keeps_good_weights_and_its_advice_resumes_from_them(tmp_path):
    """``module.optimizer.lr=1e4`` explodes the weights (finite, |w| ~ 1e5, val/bpd in the thousands): the best
    val/bpd checkpoint holds them, the guard's good.ckpt does not; the guard's advice (printed when the NaNs come),
    followed, resumes from good.ckpt with the ten times lower rate."""
    from types import SimpleNamespace

    from vdmlab.callbacks.nonfinite import NonFiniteGuard

    run_dir = train(tmp_path, "diverging", "module.optimizer.lr=1e4", "trainer.max_epochs=3")
    good, last = run_dir / "checkpoints" / "good.ckpt", load_checkpoint(run_dir / "checkpoints" / "last.ckpt")

    def largest(state):
        return max(float(v.abs().max()) for k, v in state["state_dict"].items() if k.startswith("net.")
                   and v.is_floating_point())

    assert largest(last) > 1e3 and largest(load_checkpoint(good)) < 10  # exploded vs. from before the divergence
    guard = NonFiniteGuard(patience=3, dirpath=str(run_dir / "checkpoints"))
    guard.good_step, guard.consecutive, guard.resume_command = 0, 3, "python train.py"
    advice = guard._advice(SimpleNamespace(param_groups=[{"lr": 1e4, "initial_lr": 1e4}]))
    followed = advice.split("\n")[1].split()[2:]  # after "python train.py"
    assert followed == [f"ckpt_path={good}", "module.optimizer.lr=1000"]
    resumed = train(tmp_path, "followed", *followed, "trainer.max_epochs=1")
    assert resumed == run_dir  # continued in the run's own folder
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert state["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 1000.0  # the advised rate was used
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert largest(state) < largest(last)  # trained on from the good weights, not the exploded ones


def test_a_run_stored_in_an_earlier_spelling_resumes_and_a_real_change_is_still_refused(make_config):
    """Checkpoints written before the time sampler became ``hydra.utils.get_method`` stored it as a Hydra partial, and
    before augmentation labels existed stored no ``model.augment_dim``: the same function and no labels, so resuming
    them is not refused; another function still is."""
    from omegaconf import OmegaConf

    from vdmlab.cli.checkpoints import config_differences

    requested = OmegaConf.to_container(make_config(), resolve=False)
    requested.pop("hydra", None)
    stored = {**requested, "module": {**requested["module"], "time_sampler": {
        "_target_": "vdmlab.diffusion.losses.low_discrepancy_times", "_partial_": True}}}
    stored["model"] = {k: v for k, v in requested["model"].items() if k != "augment_dim"}  # before augmentation labels
    assert config_differences(stored, requested) == ([], [])
    stored["module"]["time_sampler"]["_target_"] = "vdmlab.diffusion.losses.iid_times"
    refused, _ = config_differences(stored, requested)
    assert refused == ["module.time_sampler.path: 'vdmlab.diffusion.losses.iid_times' -> "
                       "'vdmlab.diffusion.losses.low_discrepancy_times'"]
