"""What a new user meets on the command line: the run folder's job log holds what the console shows (the final
metrics table last), no Lightning notice at checkpoint saves, debug=profile, no run folder for a configuration
that fails validation, --help with the groups and examples, the final table's FID scale and row descriptions,
and schedule plots that draw constant curves as constants."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, REPO, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import read_write

from vdmlab.callbacks.plots import FLAT, schedule_figure
from vdmlab.cli.checkpoints import load_checkpoint
from vdmlab.cli.common import describe, format_table
from vdmlab.cli.jobs import NoFolderOnConfigError
from vdmlab.cli.train import run
from vdmlab.cli.validate import ConfigError
from vdmlab.diffusion.schedules import CosineSchedule, LinearSchedule
from vdmlab.diffusion.weighting import ELBOWeighting, SigmoidWeighting

LOG_PREFIX = re.compile(r"^\[[^]]+\]\[[^]]+\]\[[A-Z]+\] - ")


def groups() -> dict[str, list[str]]:
    """Every config group of conf/ (Hydra's own aside; nested ones as ``ode/solver``) with its options."""
    folders = {p.parent for p in (REPO / "conf").rglob("*.yaml")} - {REPO / "conf"}
    named = {d.relative_to(REPO / "conf").as_posix(): d for d in folders}
    return {name: sorted(p.stem for p in d.glob("*.yaml")) for name, d in sorted(named.items())
            if name.split("/")[0] != "hydra"}


def python(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_log_holds_the_console_and_ends_with_the_metrics_table(tmp_path):
    result = python("train.py", "trainer.max_steps=3", "fid=null", "logger=csv",
                    "callbacks.sample_grid.num_samples=4", "sampler.steps=4", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (log_file,) = tmp_path.glob("train/runs/*/train.log")
    messages = [LOG_PREFIX.sub("", line) for line in log_file.read_text().splitlines()]
    console = [line.removeprefix("WARNING: ") for line in result.stdout.splitlines()
               if line.strip() and "it/s" not in line and "\x1b[" not in line]  # progress bars aside
    assert console and all(line in messages for line in console)
    for lightning_line in ("GPU available", "Total params", "`Trainer.fit` stopped"):
        assert any(lightning_line in m for m in messages), lightning_line
    table = messages[next(i for i, m in enumerate(messages) if m.startswith("Finished train in")) + 1:]
    assert table[0].split() == ["metric", "value", "description"]
    rows = table[2:]
    assert {row.split()[0] for row in rows} >= {"test/bpd", "test/bpd_se", "time/minutes", "train/steps"}
    assert all(describe(row.split()[0]) for row in rows)  # every row explained
    assert not result.stderr.strip(), result.stderr[-2000:]  # nothing printed twice through Lightning's own handler
    assert "weights_only" not in result.stdout + log_file.read_text()


def test_short_fit_saves_without_a_weights_only_notice_and_debug_profile_writes_the_profile(make_config, recwarn):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    lightning = logging.getLogger("lightning.pytorch")
    level = lightning.level  # other tests in this process may have raised it: Lightning's info lines must pass
    lightning.addHandler(handler)
    lightning.setLevel(logging.INFO)
    try:
        cfg = make_config(["debug=profile", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                           "trainer.limit_test_batches=1", "sampler.steps=4", "model.width=16"])
        run(cfg)
    finally:
        lightning.removeHandler(handler)
        lightning.setLevel(level)
    out = Path(cfg.paths.output_dir)
    assert records  # Lightning's info lines reached the handler (so the check below can fail)
    assert not [r for r in records if "weights_only" in r.getMessage()]
    assert not [w for w in recwarn if "weights_only" in str(w.message)]
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 2  # loadable with weights_only=True
    assert "Action" in (out / "fit-profile.txt").read_text()


def test_invalid_config_leaves_no_run_folder(tmp_path):
    result = python("train.py", "model.width=-8", f"paths.log_dir={tmp_path}")
    assert result.returncode != 0 and "model.width=-8 is invalid" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_run_folder_is_never_removed_on_a_config_error(tmp_path):
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep")
    cfg = compose_config(existing, [f"hydra.run.dir={existing}"])
    callback = NoFolderOnConfigError()
    callback.on_run_start(cfg)
    (existing / ".hydra").mkdir()
    (existing / ".hydra" / "config.yaml").write_text("{}")  # what Hydra writes into the folder
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ConfigError("model.width=-8 is invalid"))
    callback.on_job_end(cfg, job_return=failed)
    assert (existing / "notes.txt").read_text() == "keep" and (existing / ".hydra" / "config.yaml").is_file()
    fresh = tmp_path / "new" / "run"  # the same failure in a folder this run made: it goes, with its parent
    cfg = compose_config(tmp_path / "unused", [f"hydra.run.dir={fresh}"])
    callback.on_run_start(cfg)
    with read_write(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(fresh)
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "config.yaml").write_text("{}")
    callback.on_job_end(cfg, job_return=failed)
    assert not (tmp_path / "new").exists()


def test_help_lists_every_group_with_its_options_and_examples():
    result = python("train.py", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for group, options in groups().items():
        assert f"{group}: {', '.join(options)}" in out  # the options, from the config folders
        top = group.split("/")[0]
        assert re.search(rf"^  {top}\S* +\S", out, re.MULTILINE), group  # and a one-line description
    assert "python train.py -m weighting=elbo,sigmoid,edm" in out and "python train.py ckpt_path=last" in out
    for script, listed in (("sample", ("sampler", "sampling_schedule")), ("eval", ("logger",))):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            help_text = compose(script, return_hydra_config=True, overrides=["ckpt_path=x"]).hydra.help.template
        assert f"python {script}.py ckpt_path=" in help_text
        for group in listed:  # sample.py's and eval.py's help names every option of their groups
            line = next(line for line in help_text.splitlines() if line.startswith(f"  {group} "))
            assert all(option in line for option in groups()[group]), line


def test_fid_rows_carry_their_sample_count_and_every_row_a_description():
    table = format_table({"test/bpd": 1.25, "test/fid": 12.25, "test/fid_n": 1000.0, "val/fid": 30.0,
                          "val/fid_n": 200.0, "val/fid_n_real": 360, "train/loss_variance": 2.0, "test/class_7": 60,
                          "test/classes_missing": 0, "test/class_max_min": 2.28, "test/class_chi2_p": 0.01})
    lines = table.splitlines()
    assert not any(line.split()[0].endswith(("fid_n", "fid_n_real")) for line in lines)
    assert "12.2500  (FID@1000)" in next(line for line in lines if line.split()[0] == "test/fid")
    assert "(FID@200 vs 360 real)" in next(line for line in lines if line.split()[0] == "val/fid")
    for line in lines[2:]:
        assert describe(line.split()[0]) in line and describe(line.split()[0])


@pytest.mark.parametrize(("schedule", "weighting", "panels"), [(LinearSchedule(-5.0, 10.0), ELBOWeighting(), 3),
                                                               (CosineSchedule(-5.0, 10.0), SigmoidWeighting(), 4)])
def test_schedule_plot_draws_flat_curves_flat_and_no_empty_panel(schedule, weighting, panels):
    fig = schedule_figure(schedule, weighting)
    assert len(fig.axes) == panels and all(ax.lines for ax in fig.axes)  # every panel has data
    for ax in fig.axes:
        y = ax.lines[0].get_ydata()
        low, high = ax.get_ylim()
        if y.max() - y.min() <= FLAT * abs(y.mean()):  # flat: p(λ) of the linear schedule, w of the ELBO
            assert high - low >= 0.1 * abs(y.mean()) and low <= y.min() <= y.max() <= high
    if panels == 3:
        assert any("no kernel p_w(t)" in text.get_text() for text in fig.axes[2].texts)
