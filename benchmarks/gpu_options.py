"""GPU options of the training config: ``trainer.precision`` (32-true, bf16-mixed, 16-mixed autocast),
``module.compile`` (torch.compile of the training forward) and ``module.channels_last``, each trained with the
DiffusionModule under a real Lightning trainer (the path of ``python train.py trainer=gpu ...``).

For every option: steady-state images/s (steps [warmup, steps) timed, as in train_throughput.py), the speed-up
over 32-true, the seconds of the whole fit (the first steps include torch.compile's compilation), and whether
every training loss was finite. On a CPU the same runs check that each option trains with a finite loss
(Lightning runs bf16-mixed and 16-mixed as CPU autocast; compile needs a C++ compiler). An option that fails
is reported with its error and the others still run.

    python benchmarks/gpu_options.py [--device auto|cpu|cuda] [--batch-sizes 128 1024] [--options ...] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.train_throughput import images_per_s, lightning_run

NAME = "gpu_options"
# name -> (trainer.precision, module.compile, module.channels_last)
OPTIONS = {
    "32-true": ("32-true", False, False),
    "bf16-mixed": ("bf16-mixed", False, False),
    "16-mixed": ("16-mixed", False, False),
    "channels_last": ("32-true", False, True),
    "compile": ("32-true", True, False),
    "bf16-mixed + channels_last": ("bf16-mixed", False, True),
    "bf16-mixed + compile": ("bf16-mixed", True, False),
    "bf16-mixed + compile + channels_last": ("bf16-mixed", True, True),
}
CLI = {"precision": "trainer.precision={}", "compile": "module.compile=true", "channels_last": "module.channels_last=true"}


def overrides(option: str) -> str:
    """The ``python train.py`` overrides of an option."""
    precision, compile_, channels_last = OPTIONS[option]
    parts = [] if precision == "32-true" else [CLI["precision"].format(precision)]
    parts += [CLI["compile"]] * compile_ + [CLI["channels_last"]] * channels_last
    return " ".join(parts) or "(defaults)"


def compile_workaround() -> bool:
    """Make ``module.compile=true`` trainable while module.py has the bug; True when the workaround was applied.

    ``DiffusionModule.loss_terms`` picks the network with ``net or self.net``. A compiled module has no truth
    value (``OptimizedModule`` forwards ``len()`` to the UNet, which raises TypeError), so ``module.compile=true``
    fails at the first training step. The fix in module.py is ``net if net is not None else self.net``; until it
    is in, this process gives compiled modules a truth value, which changes nothing else.
    """
    import inspect

    from vdmlab.module import DiffusionModule

    if "net or self.net" not in inspect.getsource(DiffusionModule.loss_terms):
        return False
    from torch._dynamo.eval_frame import OptimizedModule

    OptimizedModule.__bool__ = lambda self: True
    return True


def plan(args) -> list[tuple[int, str]]:
    """(batch size, option) pairs: every option without compile first, then the compile ones (slow to start)."""
    pairs = [(b, o) for b in args.batch_sizes for o in args.options if not OPTIONS[o][1]]
    return pairs + [(b, o) for b in args.batch_sizes for o in args.options if OPTIONS[o][1]
                    and (not args.compile_batch_sizes or b in args.compile_batch_sizes)]


def measure_option(args, device, batch_size: int, option: str) -> dict:
    """Train with one option under the Lightning trainer; images/s, fit seconds and the finiteness of the losses."""
    precision, compile_, channels_last = OPTIONS[option]
    row = {"batch_size": batch_size, "option": option, "overrides": overrides(option),
           "precision": precision, "compile": compile_, "channels_last": channels_last}
    runs = []
    try:
        for _ in range(args.repeats):
            built = common.build_default(args.config, network=args.network, parameterization=args.parameterization,
                                         batch_size=batch_size, width=args.width, compile=compile_,
                                         channels_last=channels_last, extra=args.set)
            runs.append(lightning_run(built, device, args.steps, args.warmup, precision=precision))
    except Exception as error:  # noqa: BLE001 - one failing option is a result, not the end of the run
        return {**row, "error": f"{type(error).__name__}: {error}"[:300], "losses_finite": False}
    losses = [v for r in runs for v in r["losses"]]
    return {**row, "images_per_s": common.median(images_per_s(r, batch_size) for r in runs),
            "runs": [images_per_s(r, batch_size) for r in runs],
            "fit_seconds": common.median(r["fit_seconds"] for r in runs),
            "losses_finite": bool(losses) and all(common.finite(v) for v in losses),
            "final_loss": losses[-1] if losses else None, "steps": args.steps}


def with_speedups(rows: list[dict]) -> list[dict]:
    """Each row's images/s over the 32-true row's of its batch size; rows sorted by batch size, then option."""
    base = {r["batch_size"]: r.get("images_per_s") for r in rows if r["option"] == "32-true"}
    order = list(OPTIONS)
    rows = sorted(rows, key=lambda r: (r["batch_size"], order.index(r["option"])))
    for row in rows:
        b = base.get(row["batch_size"])
        row["speedup_vs_32"] = row["images_per_s"] / b if b and row.get("images_per_s") else None
    return rows


def report(payload: dict) -> str:
    """The markdown table of a result."""
    return "\n".join([
        f"GPU options of the training config ({payload['settings']['parameterization']}, "
        f"{payload['settings'].get('network', 'default')} network), "
        f"{common.describe(payload['machine'])}", "", common.markdown_table(payload["results"], [
            ("batch_size", "batch", ""), ("option", "option", ""), ("overrides", "python train.py overrides", "`{}`"),
            ("images_per_s", "img/s", "{:,.0f}"), ("speedup_vs_32", "vs 32-true", "{:.2f}x"),
            ("fit_seconds", "whole fit (s)", "{:.1f}"), ("losses_finite", "finite loss", ""), ("error", "error", "")])])


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--options", nargs="+", default=None, choices=list(OPTIONS),
                   help="default: all (32-true first, the baseline of the speed-ups)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 128 (quick 8)")
    p.add_argument("--steps", type=int, default=None, help="steps per run, warm-up included (default 40; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 10; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs per option (default 1)")
    p.add_argument("--width", type=int, default=None, help="model.width (default: the config's; quick 16)")
    p.add_argument("--parameterization", default="eps", choices=common.PARAMETERIZATIONS)
    p.add_argument("--network", default="default", choices=common.NETWORKS,
                   help="cifar: the CIFAR-size UNet (benchmarks/common.py:CIFAR_NETWORK) on random 3x32x32 images")
    p.add_argument("--compile-batch-sizes", nargs="+", type=int, default=None,
                   help="run the compile options only at these batch sizes (compiling is slow; default: all)")
    args = p.parse_args(argv)
    q = args.quick
    args.options = args.options or list(OPTIONS)
    args.batch_sizes = args.batch_sizes or ([8] if q else [128])
    args.steps = args.steps or (3 if q else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 10)
    args.repeats = args.repeats or 1
    args.width = args.width or (16 if q else None)
    device = common.setup(args)
    info = common.machine(device)
    workaround = any(OPTIONS[o][1] for o in args.options) and compile_workaround()
    if workaround:
        print("note: module.py picks the training net with `net or self.net`, which fails for a compiled net; "
              "compiled modules were given a truth value in this process (see compile_workaround)")
    payload = {"benchmark": NAME, "command": common.command_line("gpu_options.py", argv), "quick": q, "machine": info,
               "settings": {"batch_sizes": args.batch_sizes, "steps": args.steps, "warmup": args.warmup,
                            "repeats": args.repeats,
                            **common.built_network_summary(args.config, network=args.network, width=args.width,
                                                           extra=args.set),
                            "parameterization": args.parameterization, "network": args.network,
                            "compile_batch_sizes": args.compile_batch_sizes},
               "compile_workaround_applied": workaround, "complete": False, "results": []}
    path = common.output_path(NAME, device, args)
    rows = []
    for batch_size, option in plan(args):
        rows.append(measure_option(args, device, batch_size, option))
        payload["results"] = rows = with_speedups(rows)
        common.write_json(path, payload)  # after every option: a run stopped early keeps what it measured
    payload["complete"] = True
    common.write_json(path, payload)
    print(report(payload))
    print(f"\nwritten {path}")
    return payload


if __name__ == "__main__":
    main()
