"""An image folder of 50,000 files: first decode, cached reload, peak memory, and a changed file rebuilding the cache.

Writes ``--files`` random 32x32 RGB PNGs (10 class sub-folders) into a temporary folder, then times
``ImageFolderDataModule.setup()`` (dataset=image_folder's defaults: ``verify_images`` on, decoding by a pool of
``decode_workers`` processes, every usable core by default) three times: the first decode (verify + decode + cache
write), a reload from the cache (a fresh datamodule), and after one file is rewritten (a new cache key: decoded again).
Peak memory: this process's peak RSS above its RSS before the phase (Linux VmHWM, reset before each phase; the worker
processes' own memory is not included).

    python benchmarks/image_folder_scale.py --device cpu [--files 50000] [--decode-workers N]

Writes benchmarks/results/image_folder_scale_<device>.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from benchmarks import common, memory

NAME = "image_folder_scale"


def write_folder(root: Path, n: int, size: int = 32, classes: int = 10, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = root / f"class{i % classes}" / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def timed_setup(root: Path, cache: Path, workers: int | None) -> tuple[float, float, object]:
    """(seconds, peak MiB above the start, datamodule) of one ``setup()``."""
    from vdmlab.data import ImageFolderDataModule

    dm = ImageFolderDataModule(root=str(root), image_size=32, channels=3, cache_dir=str(cache), decode_workers=workers,
                               batch_size=64, eval_batch_size=256, num_workers=0, seed=0)
    baseline = memory.reset_peak()
    start = time.perf_counter()
    dm.setup()
    return time.perf_counter() - start, memory.peak_rss_mib() - baseline, dm


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=50_000)
    p.add_argument("--decode-workers", type=int, default=None, help="dataset.decode_workers (default: every core)")
    args = p.parse_args(argv)
    device = common.setup(args)
    n = 600 if args.quick else args.files
    payload = {"benchmark": NAME, "quick": bool(args.quick), "command": common.command_line("image_folder_scale.py", argv),
               "machine": common.machine(device), "files": n, "rows": []}
    out = common.output_path(NAME, device, args)
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "images", Path(tmp) / "cache"
        start = time.perf_counter()
        paths = write_folder(root, n)
        payload["write_s"] = time.perf_counter() - start
        payload["folder_mib"] = sum(path.stat().st_size for path in paths) / 2**20
        print(f"wrote {n} PNGs ({payload['folder_mib']:.1f} MiB) in {payload['write_s']:.1f} s", flush=True)
        rows = payload["rows"]

        def phase(name: str):
            seconds, peak, dm = timed_setup(root, cache, args.decode_workers)
            rows.append({"phase": name, "seconds": seconds, "peak_mib": peak, "images": len(dm.labels),
                         "cache_file": dm.cache_path.name, "cache_mib": dm.cache_path.stat().st_size / 2**20})
            common.write_json(out, payload)
            print(rows[-1], flush=True)
            return dm

        first = phase("first decode (verify + decode + write cache)")
        phase("reload from the cache")
        changed = paths[n // 2]
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(changed)
        again = phase("one file changed: decoded again")
        index = [i for i, f in enumerate(again.train_set.files + again.val_set.files + again.test_set.files)
                 if f == changed][0]
        levels = torch.cat([again.train_set.levels, again.val_set.levels, again.test_set.levels])
        payload["changed_file_rebuilt_cache"] = bool(again.cache_path != first.cache_path and int(levels[index].max()) == 0)
        payload["decode_workers"] = args.decode_workers
    payload["table"] = common.markdown_table(rows, [("phase", "phase", ""), ("seconds", "time (s)", "{:.2f}"),
                                                    ("peak_mib", "peak RSS above start (MiB)", "{:.1f}"),
                                                    ("cache_mib", "cache file (MiB)", "{:.1f}")])
    common.write_json(out, payload)
    print(common.describe(payload["machine"]))
    print(payload["table"])
    print("changed file rebuilt the cache:", payload["changed_file_rebuilt_cache"])
    return payload


if __name__ == "__main__":
    main()
