"""Evaluation at N = 1k, 10k, 50k: time and peak memory of FID (+ KID, precision/recall) of N samples and of bits/dim
over N examples, each N in a fresh process, with the default digits run (``python train.py``'s network).

FID row: :func:`vdmlab.metrics.fid_samples.sharded_sample_fid` as ``python eval.py fid.samples_dir=...`` runs it: N
samples of the default digits network (its initial weights: the cost does not depend on them) drawn with the
ancestral sampler in ``--steps`` steps in batches of ``--batch-size``, each batch written to a .npy file in a
temporary folder, its digits-classifier features added to FIDMetric's running sums, and kept in a reservoir of at most
``--subset`` features (``fid.metrics_subset``); FID against the digits test split; then KID and precision/recall on
the kept subsets (``metrics_s``). ``--samples synthetic``: the same with uniform random levels in place of the
network's samples (what the pipeline itself costs, without the sampler's network evaluations).
bits/dim row: :func:`vdmlab.metrics.bpd.evaluate_bpd` (continuous-time ELBO, 8 λ draws per example as ``eval.py``'s
``bpd.num_samples``) over N random 1x8x8 digits-shaped images of 17 levels (the digits splits hold fewer than 1,000
images). Peak memory: the process's peak RSS above its RSS after building the run (Linux VmHWM, reset then).

    python benchmarks/eval_scaling.py --device cpu --threads 1 --sizes 1000 10000 50000 --samples synthetic network \
        --network-sizes 1000 --bpd-sizes 1000 10000

Writes benchmarks/results/eval_scaling_<device>.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common, memory

NAME = "eval_scaling"


def synthetic_sampler(num_levels: int):
    """Samples without a network: uniform random levels (the FID pipeline's own cost: files, features, sums)."""
    def sample(n, generator):
        levels = torch.randint(0, num_levels, (n, 1, 8, 8), generator=generator, device=generator.device)
        return levels.float() * (2.0 / (num_levels - 1)) - 1.0

    return sample


def fid_at(n: int, steps: int, batch_size: int, subset: int, device_type: str, threads: int | None,
           samples: str = "network") -> dict:
    """One FID row (run in a fresh process)."""
    if threads:
        torch.set_num_threads(threads)
    from vdmlab.metrics.fid import DigitsFeatures, FIDMetric
    from vdmlab.metrics.fid_samples import sharded_sample_fid
    from vdmlab.metrics.sample_metrics import RecordingExtractor, sample_metrics

    common.quiet()
    device = torch.device(device_type)
    built = common.build_default(eval_num_samples=None)
    module = built.module.to(device).eval()
    built.datamodule.setup()
    recorder = RecordingExtractor(DigitsFeatures(), limit=subset)
    metric = FIDMetric(recorder, reset_real_features=False).to(device)
    metric.update_from_dataset(built.datamodule.test_set, real=True)
    real = recorder.take()
    baseline = memory.reset_peak()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        sample = (synthetic_sampler(module.num_levels) if samples == "synthetic"
                  else lambda k, g: module.sample(k, steps=steps, generator=g))
        values = sharded_sample_fid(metric, sample, n, batch_size, module.num_levels, seed=0, folder=folder)
        fid_s = time.perf_counter() - start
        stored = sum(p.stat().st_size for p in Path(folder).rglob("*.npy"))
    start = time.perf_counter()
    fake = recorder.take()
    extra = sample_metrics(real, fake, recorder.extractor)
    metrics_s = time.perf_counter() - start
    what = "FID + KID + P/R, synthetic samples" if samples == "synthetic" else f"FID + KID + P/R, {steps}-step samples"
    return {"what": what, "n": n, "seconds": fid_s, "metrics_s": metrics_s,
            "peak_mib": memory.peak_rss_mib() - baseline, "fid": values["fid"], "fid_n": values["fid_n"],
            "kid": extra["kid"], "precision": extra["precision"], "recall": extra["recall"], "kept_features": len(fake),
            "samples_on_disk_mib": stored / 2**20, "steps": steps, "batch_size": batch_size}


def bpd_at(n: int, batch_size: int, device_type: str, threads: int | None) -> dict:
    """One bits/dim row (run in a fresh process)."""
    if threads:
        torch.set_num_threads(threads)
    from torch.utils.data import DataLoader, TensorDataset

    from vdmlab.metrics.bpd import evaluate_bpd

    common.quiet()
    device = torch.device(device_type)
    module = common.build_default(eval_num_samples=None).module.to(device)
    levels = torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    x = levels.float() * (2.0 / 16) - 1.0
    loader = DataLoader(TensorDataset(torch.arange(n), x), batch_size=batch_size)
    baseline = memory.reset_peak()
    start = time.perf_counter()
    result = evaluate_bpd(module.elbo_model(num_samples=8, timesteps=None), loader, device=device, seed=0)
    return {"what": "bits/dim", "n": n, "seconds": time.perf_counter() - start,
            "peak_mib": memory.peak_rss_mib() - baseline, "bpd": result["bpd"], "bpd_se": result["bpd_se"],
            "batch_size": batch_size}


COLUMNS = [("what", "evaluation", ""), ("n", "N", "{:,}"), ("seconds", "time (s)", "{:.1f}"),
           ("metrics_s", "KID + P/R (s)", "{:.2f}"), ("peak_mib", "peak RSS above the built run (MiB)", "{:.1f}"),
           ("kept_features", "features kept for KID, P/R", ""), ("samples_on_disk_mib", "samples on disk (MiB)", "{:.2f}")]


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000, 50000])
    p.add_argument("--steps", type=int, default=20, help="sampler steps per FID sample")
    p.add_argument("--batch-size", type=int, default=500, help="samples (and bits/dim examples) per batch")
    p.add_argument("--subset", type=int, default=10000, help="fid.metrics_subset: features kept for KID and P/R")
    p.add_argument("--samples", nargs="+", default=["network"], choices=("network", "synthetic"),
                   help="FID rows: samples of the network, and/or random levels without a network (the pipeline's cost)")
    p.add_argument("--network-sizes", nargs="*", type=int, default=None,
                   help="N of the rows with network samples (default: --sizes; none: no such rows)")
    p.add_argument("--bpd-sizes", nargs="*", type=int, default=None,
                   help="N of the bits/dim rows (default: --sizes; none: no bits/dim rows)")
    args = p.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    device = common.setup(args)
    sizes = [60, 200] if args.quick else args.sizes
    steps = 2 if args.quick else args.steps
    batch = 50 if args.quick else args.batch_size
    subset = 100 if args.quick else args.subset
    payload = {"benchmark": NAME, "quick": bool(args.quick), "command": common.command_line("eval_scaling.py", argv),
               "machine": common.machine(device), "network": common.network_summary(common.build_default().module.net),
               "rows": []}
    out = common.output_path(NAME, device, args)
    jobs = [(fid_at, n, steps, batch, subset, device.type, args.threads, kind) for kind in args.samples
            for n in (sizes if kind == "synthetic" or args.quick or args.network_sizes is None else args.network_sizes)]
    jobs += [(bpd_at, n, batch, device.type, args.threads)
             for n in (sizes if args.quick or args.bpd_sizes is None else args.bpd_sizes)]
    for fn, n, *fn_args in jobs:
        row = memory.in_fresh_process(fn, n, *fn_args)
        row.setdefault("n", n)
        payload["rows"].append(row)
        common.write_json(out, payload)
        print(row, flush=True)
    return common.finish(out, payload, COLUMNS)


if __name__ == "__main__":
    main()
