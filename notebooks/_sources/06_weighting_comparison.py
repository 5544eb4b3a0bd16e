"""Source of 06_weighting_comparison.ipynb (built by notebooks/_build.py)."""

# ruff: noqa: E501  (markdown prose and tables; the code cells are linted in the .ipynb files)

M, C = "markdown", "code"

CELLS = [
    (M, r"""
    # 06 · Comparing weightings from a sweep folder: likelihood against sample quality, over seeds

    A weighting sweep (`python train.py -m experiment=weighting_sweep seed=0,1,2`) leaves one run folder per job:
    its config (`.hydra/`), its CSV log (`csv/metrics.csv`) and its final metrics (`metrics.json`). This notebook
    reads such a folder with the same analysis as `python compare.py` (`vdmlab.analysis.compare`) and draws the
    comparison: bits/dim of the unweighted ELBO against FID, each weighting at its mean over seeds with ±1 standard
    error, coloured by monotonicity (§4.7: a monotonic weighting is the ELBO of Gaussian-augmented data, eq. 4.162),
    and the validation curves.

    Point it at a sweep with the environment variable `VDMLAB_SWEEP=<sweep folder>`. Without one it runs a tiny real
    sweep here (two weightings × two seeds, a small network, a few epochs: the numbers show the format, not a
    ranking; `docs/results.md` has the measured comparison).
    """),
    (C, r"""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from IPython.display import Markdown, display

    from vdmlab.analysis.runs import find_runs
    from vdmlab.analysis.sweeps import fid_vs_bpd_figure, group_by_seed, seeds_markdown, val_bpd_figure

    %matplotlib inline

    sweep = os.environ.get("VDMLAB_SWEEP")
    if sweep is None:  # a tiny real sweep: 2 weightings x 2 seeds, about a minute on a CPU
        sweep = Path(tempfile.mkdtemp()) / "sweep"
        repo = Path.cwd().parent  # notebooks/ -> the repository
        cmd = [sys.executable, str(repo / "train.py"), "-m", "weighting=elbo,edm", "seed=0,1", "schedule=cosine",
               f"hydra.sweep.dir={sweep}", "model.width=16", "model.num_res_blocks=1", "trainer.max_epochs=3",
               "fid.num_samples=100", "fid.steps=10", "fid.every_n_epochs=0", "logger=csv",
               "~callbacks.sample_grid", "~callbacks.schedule_plot"]
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True)
    sweep = Path(sweep)
    runs = find_runs(sweep)
    groups = group_by_seed(runs)
    print(f"{len(runs)} runs in {sweep}, {len(groups)} groups (runs that differ only by their seed)")
    """),
    (M, r"""
    ## The table: each metric as mean ± standard error over the seeds

    A difference between two weightings means something only when it is large against both standard errors.
    """),
    (C, r"""
    display(Markdown(seeds_markdown(groups)))
    """),
    (M, r"""
    ## FID against bits/dim

    Lower-left is better on both. The ELBO weighting optimises the likelihood itself; non-monotonic weightings
    (EDM, IDDPM, `simple`, min-SNR) trade likelihood for sample quality.
    """),
    (C, r"""
    display(fid_vs_bpd_figure(runs, groups, dpi=80))  # the figure compare.py writes as compare_fid_vs_bpd.png
    """),
    (M, r"""
    ## Validation bits/dim while training

    One line per weighting, the mean over its seeds with a ±1 standard-error band; solid lines are monotonic
    weightings, dashed non-monotonic ones.
    """),
    (C, r"""
    display(val_bpd_figure(runs, groups, dpi=80))  # compare.py's compare_val_bpd.png
    """),
]
