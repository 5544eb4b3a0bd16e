"""Experiment tracking and sweeps: the W&B logger factory (offline by itself, grouped and tagged), the weighting
sweep and SLURM configs, the compare command, and real multiruns of train.py (W&B offline + CSV, and DDP)."""

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from wandb_offline import read_offline_run

from vdmlab import loggers
from vdmlab.analysis.compare import compare, read_metrics
from vdmlab.callbacks import SampleGrid, SchedulePlot
from vdmlab.cli.compare import main
from vdmlab.cli.jobs import single_job_argv
from vdmlab.cli.train import instantiate_all
from vdmlab.diffusion.schedules import CosineSchedule

# A tiny but complete job: digits, a 1-block UNet, 2 training steps, one val and one test batch, FID off.
TINY = ["schedule=cosine", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", "model.width=16", "model.num_res_blocks=1",
        "callbacks.sample_grid.num_samples=4", "sampler.steps=4", "++fid=null"]


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """A machine without W&B credentials: no API key, an empty netrc, no WANDB_MODE."""
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    return netrc


# ---------------------------------------------------------------- W&B factory
def test_mode_auto_is_offline_without_credentials_and_online_with_them(no_credentials, monkeypatch):
    assert loggers.resolve_mode("auto") == "offline"
    no_credentials.write_text("machine api.wandb.ai login user password not-a-real-key\n")
    assert loggers.has_wandb_credentials() and loggers.resolve_mode("auto") == "online"
    no_credentials.write_text("")
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    assert loggers.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's explicit choice wins over auto
    assert loggers.resolve_mode("auto") == "disabled"
    assert loggers.resolve_mode("offline") == "offline"


@pytest.mark.parametrize("weighting", ["sigmoid", "min_snr"])
def test_wandb_logger_config_groups_tags_and_saves_in_the_run_dir(weighting, make_config, no_credentials):
    cfg = make_config(["logger=wandb", f"weighting={weighting}", "schedule=cosine", "parameterization=v", "tags=[mine]"])
    built = instantiate_all(cfg.logger)
    assert {type(lg).__name__ for lg in built} == {"CSVLogger", "VDMWandbLogger"}  # compare needs the CSV log
    (wandb_logger,) = [lg for lg in built if isinstance(lg, loggers.VDMWandbLogger)]
    init = wandb_logger._wandb_init
    monotonic = get_class(cfg.weighting._target_).monotonic
    assert init["mode"] == "offline" and init["project"] == "vdmlab" and init["job_type"] == cfg.task_name
    assert init["group"] == Path(cfg.paths.output_dir).name  # a single run is its own group
    assert init["tags"] == [f"weighting={weighting}", "schedule=cosine", "parameterization=v",
                            "monotonic" if monotonic else "non-monotonic", "mine"]
    assert Path(init["dir"]) == Path(cfg.paths.output_dir)
    assert init["name"] == f"{weighting}-cosine-v"


def test_wandb_logger_group_override(make_config, no_credentials):
    cfg = make_config(["logger=wandb", "logger.wandb.group=my-study"])
    assert instantiate(cfg.logger.wandb)._wandb_init["group"] == "my-study"


def test_wandb_logger_is_skipped_with_a_warning_without_the_package(make_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    cfg = make_config(["logger=many"])
    with pytest.warns(UserWarning, match="wandb is not installed"):
        built = instantiate_all(cfg.logger)
    assert sorted(type(lg).__name__ for lg in built) == ["CSVLogger", "TensorBoardLogger"]


def test_media_callbacks_draw_on_rank_zero_only():
    """Sample grids and schedule plots are drawn (and sent to the loggers) by global rank 0 only."""
    calls = []
    module = SimpleNamespace(device=torch.device("cpu"), sample=lambda *a, **k: calls.append("sample"), schedule=None,
                             weighting=None)
    trainer = SimpleNamespace(is_global_zero=False, default_root_dir="/nonexistent", loggers=[], global_step=0)
    SampleGrid(num_samples=4).on_train_end(trainer, module)
    SchedulePlot().on_fit_start(trainer, module)  # would fail on schedule=None if it plotted
    assert calls == []


# ---------------------------------------------------------------- configs
def test_weighting_sweep_covers_four_monotonic_and_four_non_monotonic(make_config):
    cfg = make_config(["experiment=weighting_sweep"])
    names = cfg.hydra.sweeper.params.weighting.split(",")
    assert names == ["elbo", "sigmoid", "v", "flow", "edm", "iddpm", "simple", "min_snr"]
    monotonic = {n: get_class(OmegaConf.load(REPO / "conf" / "weighting" / f"{n}.yaml")._target_).monotonic for n in names}
    assert [n for n in names if monotonic[n]] == ["elbo", "sigmoid", "v", "flow"]
    assert cfg.schedule._target_.endswith("CosineSchedule") and "wandb" in cfg.logger and "csv" in cfg.logger
    assert cfg.trainer.max_epochs < make_config([]).trainer.max_epochs


def test_simple_weighting_is_genuinely_non_monotonic_under_the_cosine_schedule():
    """w = p(λ) under the sweep's cosine schedule rises then falls (it is constant only under the linear one)."""
    schedule = CosineSchedule(logsnr_min=-5.0, logsnr_max=10.0)
    density = schedule.density(torch.linspace(-5.0, 10.0, 301))
    steps = torch.diff(density)
    assert (steps > 0).any() and (steps < 0).any()


def test_slurm_launcher_composes_without_submitting(make_config):
    cfg = make_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp", "trainer.devices=4",
                       "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] > 0
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"  # builds; only launch() submits


def test_ddp_children_rerun_only_their_own_job():
    argv = ["/repo/train.py", "-m", "-cn", "train", "--config-dir=/extra", "weighting=elbo,edm", "seed=1"]
    assert single_job_argv(argv, ["weighting=edm", "seed=1"]) == [
        "/repo/train.py", "-cn", "train", "--config-dir=/extra", "weighting=edm", "seed=1"]


# ---------------------------------------------------------------- compare
def write_run(folder: Path, weighting: str, rows: list[dict], overrides: list[str]) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"weighting": OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "weighting" / f"{weighting}.yaml"))}))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "csv").mkdir()
    keys = ["epoch", "step", *sorted({k for row in rows for k in row} - {"epoch", "step"})]
    with open(folder / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_compare_reports_the_last_logged_values_and_fid_with_its_count(tmp_path):
    write_run(tmp_path / "0", "sigmoid", [{"epoch": 0, "step": 10, "val/bpd": 3.5}, {"epoch": 1, "step": 20, "val/bpd": 3.7},
                                          {"epoch": 1, "step": 20, "test/bpd": 3.6, "test/fid": 12.5, "test/fid_n": 500}],
              ["weighting=sigmoid", "seed=0"])
    write_run(tmp_path / "1", "edm", [{"epoch": 0, "step": 10, "val/bpd": 4.0}, {"epoch": 0, "step": 10, "test/bpd": 3.9}],
              ["weighting=edm", "seed=0"])
    paths = compare(tmp_path)
    with open(paths["csv"]) as f:
        rows = {r["weighting"]: r for r in csv.DictReader(f)}
    assert float(rows["sigmoid"]["val/bpd"]) == 3.7  # the last value, not the best: what the W&B summary shows
    assert (float(rows["sigmoid"]["fid"]), int(rows["sigmoid"]["fid_n"])) == (12.5, 500)
    assert rows["sigmoid"]["monotonic"] == "True" and rows["edm"]["monotonic"] == "False"
    assert rows["edm"]["fid"] == "" and int(rows["sigmoid"]["steps"]) == 20
    table = paths["markdown"].read_text()
    assert "12.50 (500)" in table and "| weighting=edm |" in table and "seed=0" not in table
    assert paths["fid_vs_bpd"].stat().st_size > 0 and paths["val_bpd"].stat().st_size > 0
    assert read_metrics(tmp_path / "0" / "csv" / "metrics.csv")[1]["val/bpd"] == [(10.0, 3.5), (20.0, 3.7)]


def test_compare_without_fid_says_so_and_rejects_folders_without_runs(tmp_path, capsys):
    write_run(tmp_path / "sweep" / "0", "elbo", [{"epoch": 0, "step": 5, "val/bpd": 4.0}], ["weighting=elbo"])
    assert main([str(tmp_path / "sweep")]) == 0
    assert "FID: not logged by any run" in (tmp_path / "sweep" / "compare.md").read_text()
    assert main([str(tmp_path / "empty_or_missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- real multiruns
def multirun(tmp_path: Path, extra: list[str], timeout: int) -> tuple[Path, subprocess.CompletedProcess]:
    """``python train.py -m weighting=elbo,edm`` (tiny) with W&B offline on a machine without credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    (tmp_path / "netrc").write_text("")
    env.update(NETRC=str(tmp_path / "netrc"), WANDB_SILENT="true", WANDB_DIR=str(tmp_path / "wandb_dir"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"), WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"))
    logs = tmp_path / "logs"
    cmd = [sys.executable, "train.py", "-m", "weighting=elbo,edm", "logger=wandb", *TINY, *extra, f"paths.log_dir={logs}"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    sweeps = list((logs / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, f"one sweep folder expected, got {sweeps}"  # DDP children must not start sweeps
    return sweeps[0], result


def check_jobs(sweep: Path, stdout: str) -> list[dict]:
    """Exactly the folders 0 and 1, each with one CSV log and one offline W&B run of the sweep's group."""
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    runs = []
    for job, (weighting, kind) in zip(("0", "1"), (("elbo", "monotonic"), ("edm", "non-monotonic"))):
        assert (sweep / job / "csv" / "metrics.csv").is_file()
        (run_dir,) = (sweep / job / "wandb").glob("offline-run-*")
        run = read_offline_run(run_dir)
        assert run["group"] == sweep.name and run["project"] == "vdmlab" and run["job_type"] == "train"
        assert {f"weighting={weighting}", kind, "schedule=cosine", "parameterization=eps"} <= set(run["tags"])
        assert run["config"]["weighting"]["_target_"].endswith(f"{'ELBO' if weighting == 'elbo' else 'EDM'}Weighting")
        assert {"val/bpd", "test/bpd", "samples/filenames", "schedule/filenames"} <= set(run["summary"])
        assert f"wandb sync {run_dir}" in stdout
        runs.append(run)
    assert runs[0]["name"] != runs[1]["name"] and len({str(r["config"]["weighting"]) for r in runs}) == 2
    return runs


def test_multirun_logs_two_offline_wandb_runs_in_one_group_and_compare_lists_both(tmp_path):
    sweep, result = multirun(tmp_path, [], timeout=300)
    runs = check_jobs(sweep, result.stdout)
    compared = subprocess.run([sys.executable, "compare.py", str(sweep)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert compared.returncode == 0, compared.stderr[-3000:]
    with open(sweep / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["weighting"], r["monotonic"]) for r in rows] == [("0", "elbo", "True"), ("1", "edm", "False")]
    for row, run in zip(rows, runs):  # the same numbers as the W&B run summary
        assert float(row["val/bpd"]) == pytest.approx(run["summary"]["val/bpd"], rel=1e-6)
        assert float(row["test/bpd"]) == pytest.approx(run["summary"]["test/bpd"], rel=1e-6)
    table = (sweep / "compare.md").read_text()
    assert "| elbo | yes |" in table and "| edm | no |" in table and table in compared.stdout
    assert (sweep / "compare_fid_vs_bpd.png").is_file() and (sweep / "compare_val_bpd.png").is_file()


@pytest.mark.slow
def test_ddp_multirun_writes_exactly_one_folder_and_one_wandb_run_per_job(tmp_path):
    sweep, result = multirun(tmp_path, ["trainer=ddp_cpu"], timeout=420)
    assert (result.stdout + result.stderr).count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # really 2 ranks per job
    check_jobs(sweep, result.stdout)
    for job in ("0", "1"):
        assert sorted(p.name for p in (sweep / job / "samples").iterdir()) == ["final.png"]


def test_compare_groups_runs_that_differ_only_by_seed_with_mean_and_standard_error(tmp_path):
    values = {("elbo", 0): 3.0, ("elbo", 1): 3.2, ("elbo", 2): 3.4, ("edm", 0): 3.9, ("edm", 1): 4.1}
    for job, ((weighting, seed), bpd) in enumerate(values.items()):
        write_run(tmp_path / str(job), weighting, [{"epoch": 0, "step": 10, "val/bpd": bpd + 0.1},
                                                    {"epoch": 0, "step": 10, "test/bpd": bpd, "test/fid": 10 * bpd,
                                                     "test/fid_n": 200, "test/fid_floor": 2.0 + seed}],
                  [f"weighting={weighting}", f"seed={seed}", "trainer.max_epochs=3"])
        config = yaml.safe_load((tmp_path / str(job) / ".hydra" / "config.yaml").read_text())
        (tmp_path / str(job) / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
    paths = compare(tmp_path)
    with open(paths["seeds_csv"]) as f:
        rows = {r["weighting"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"elbo", "edm"} and int(rows["elbo"]["seeds"]) == 3 and int(rows["edm"]["seeds"]) == 2
    elbo = [values[("elbo", s)] for s in range(3)]
    mean = sum(elbo) / 3
    se = (sum((v - mean) ** 2 for v in elbo) / 2 / 3) ** 0.5  # sample std / sqrt(n)
    assert abs(float(rows["elbo"]["test/bpd_mean"]) - mean) < 1e-9 and abs(float(rows["elbo"]["test/bpd_se"]) - se) < 1e-9
    assert int(rows["edm"]["fid_count"]) == 2 and abs(float(rows["edm"]["fid_mean"]) - 40.0) < 1e-9
    assert abs(float(rows["elbo"]["fid_floor_mean"]) - 3.0) < 1e-9 and int(rows["edm"]["fid_floor_count"]) == 2
    table = paths["markdown"].read_text()
    assert "## Over seeds" in table and f"{mean:.4f} ± {se:.4f}" in table and "3 (0, 1, 2)" in table
    assert "FID floor" in table and "3.00 ± 0.58" in table  # floors 2, 3, 4: s.e. 1/√3
    assert paths["fid_vs_bpd"].stat().st_size > 0


def test_compare_without_repeated_seeds_has_no_seed_table(tmp_path):
    write_run(tmp_path / "0", "elbo", [{"epoch": 0, "step": 5, "val/bpd": 4.0}], ["weighting=elbo", "seed=0"])
    write_run(tmp_path / "1", "edm", [{"epoch": 0, "step": 5, "val/bpd": 4.1}], ["weighting=edm", "seed=0"])
    paths = compare(tmp_path)
    assert "seeds_csv" not in paths and "Over seeds" not in paths["markdown"].read_text()


def test_seed_groups_of_one_weighting_are_told_apart_by_their_other_overrides(tmp_path):
    from vdmlab.analysis.compare import find_runs, group_by_seed, group_label

    for job, (schedule, seed) in enumerate((("linear", 0), ("linear", 1), ("learned", 0), ("learned", 1))):
        write_run(tmp_path / str(job), "elbo", [{"epoch": 0, "step": 10, "val/bpd": 3.0 + job},
                                                {"epoch": 1, "step": 20, "val/bpd": 2.5 + job}],
                  [f"seed={seed}", f"schedule={schedule}", "trainer.max_epochs=3"])
        config = yaml.safe_load((tmp_path / str(job) / ".hydra" / "config.yaml").read_text())
        (tmp_path / str(job) / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
    groups = group_by_seed(find_runs(tmp_path))
    shared = set.intersection(*(set(g.overrides) for g in groups))
    assert [group_label(g, shared) for g in groups] == ["elbo schedule=linear (n=2)", "elbo schedule=learned (n=2)"]
    assert compare(tmp_path)["val_bpd"].stat().st_size > 0  # one mean curve with its band per group


def test_a_folder_of_links_to_runs_of_several_sweeps_is_compared_and_a_link_cycle_ends(tmp_path):
    from vdmlab.analysis.compare import find_runs

    write_run(tmp_path / "sweep_a" / "0", "sigmoid", [{"epoch": 0, "step": 5, "val/bpd": 2.5}], ["weighting.bias=2", "seed=0"])
    write_run(tmp_path / "sweep_b" / "3", "elbo", [{"epoch": 0, "step": 5, "val/bpd": 2.1}], ["weighting=elbo", "seed=0"])
    both = tmp_path / "both"
    both.mkdir()
    (both / "0").symlink_to(tmp_path / "sweep_a" / "0", target_is_directory=True)
    (both / "1").symlink_to(tmp_path / "sweep_b" / "3", target_is_directory=True)
    (both / "1" / "loop").symlink_to(both, target_is_directory=True)  # a cycle: both/1/loop/1/loop/...
    runs = find_runs(both)
    assert [r.run for r in runs] == ["0", "1"]
    assert "weighting=elbo" in compare(both)["markdown"].read_text()


def test_a_group_is_named_by_what_it_learned_not_by_how_it_ran(tmp_path):
    from vdmlab.analysis.compare import find_runs, group_by_seed, group_label
    from vdmlab.analysis.runs import shared_overrides

    for job, (bias, seed) in enumerate(((0, 0), (0, 1), (4, 0), (4, 1))):
        extra = ["threads=1"] if bias == 4 else ["logger=csv", "hydra/launcher=joblib"]
        if job == 0:  # a checkpoint callback added to one seed: still a seed of the same group
            extra.append("+callbacks.early_ckpt.every_n_train_steps=440")
        write_run(tmp_path / str(job), "sigmoid", [{"epoch": 0, "step": 5, "val/bpd": 2.5}],
                  [f"seed={seed}", f"weighting.bias={bias}", *extra])
        config = yaml.safe_load((tmp_path / str(job) / ".hydra" / "config.yaml").read_text())
        (tmp_path / str(job) / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
    groups = group_by_seed(find_runs(tmp_path))
    assert [group_label(g, shared_overrides(groups)) for g in groups] == [
        "sigmoid weighting.bias=0 (n=2)", "sigmoid weighting.bias=4 (n=2)"]
