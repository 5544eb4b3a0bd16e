"""FID@N against network calls (NFE) for every sampler on a digits checkpoint: JSON + markdown in benchmarks/results/.

    python train.py trainer.max_epochs=30 fid=null logger=csv
    python benchmarks/sampler_nfe.py --ckpt outputs/train/runs/<time>/checkpoints/last.ckpt --n 500

Each sampler gets NFE // (calls per step) steps on the checkpoint's sampling grid, with its options from
conf/sampler/<name>.yaml; FID, KID (with s.e.) and precision/recall use the digits-classifier features of the
generated samples against the whole training split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vdmlab.analysis.report import markdown_table
from vdmlab.cli.build import build_from_checkpoint
from vdmlab.diffusion.sampling import CALLS_PER_STEP
from vdmlab.metrics.fid import FIDMetric, build_extractor, fid_feature
from vdmlab.metrics.sample_metrics import RecordingExtractor, kid, precision_recall

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("ancestral", "ddim", "heun", "dpmpp_2m", "edm", "euler_ancestral")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--n", type=int, default=500, help="generated samples per cell (FID@N)")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sampler_nfe_cpu"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    built = build_from_checkpoint(args.ckpt)
    module = built.module
    built.datamodule.setup()
    feature = fid_feature("auto", module.data_shape, module.num_levels)
    recorder = RecordingExtractor(build_extractor(feature))
    metric = FIDMetric(recorder, reset_real_features=False)
    metric.update_from_dataset(built.datamodule.train_set, real=True)
    real = recorder.take()
    rows = []
    for name in args.samplers:
        fn = instantiate(OmegaConf.load(REPO / "conf" / "sampler" / f"{name}.yaml").fn)
        for nfe in args.nfe:
            steps = max(1, nfe // CALLS_PER_STEP[name])
            metric.reset()
            generator = torch.Generator().manual_seed(args.seed)
            start = time.perf_counter()
            x = module.sample(args.n, steps=steps, sampler=fn, generator=generator)
            seconds = time.perf_counter() - start
            metric.update(x, real=False)
            fake = recorder.take()
            row = {"sampler": name, "nfe": steps * CALLS_PER_STEP[name], "steps": steps, "fid": float(metric.compute()),
                   **kid(real, fake, num_blocks=5), **precision_recall(real, fake), "sample_seconds": seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"ckpt": str(args.ckpt), "n": args.n, "real": f"train split ({len(real)} images)", "feature": str(feature),
            "machine": "CPU: 2-core Intel Xeon, shared with other jobs (numbers preliminary)", "threads": args.threads,
            "note": "CPU, preliminary, short checkpoint"}
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    nfes = sorted({r["nfe"] for r in rows})
    fids = {(r["sampler"], r["nfe"]): f"{r['fid']:.2f}" for r in rows}
    table = markdown_table(["sampler", *(f"NFE {n}" for n in nfes)],
                           [[name, *(fids.get((name, n), "-") for n in nfes)] for name in args.samplers])
    lines = [f"FID@{args.n} (digits-classifier features, vs the {meta['real']}) against network calls. "
             f"{meta['note']}; {meta['machine']}.", "", table]
    lines += ["", f"`python benchmarks/sampler_nfe.py --ckpt <ckpt> --n {args.n} --nfe {' '.join(map(str, args.nfe))}`"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
