"""The offsets that split one run's ``seed`` into independent random streams.

Every stream is ``seed`` plus multiples of these numbers (primes, so that the streams of different ranks, batches
and steps do not collide for any realistic count); changing one changes the numbers a run reports.
"""

#: training noise (t and ε): ``seed + TRAIN_RANK_STRIDE·rank``, so DDP ranks draw different noise
TRAIN_RANK_STRIDE = 1_000_003
#: logging-only train/bpd prior and decoder terms: ``seed + LOG_STEP_STRIDE·(step + 1)``, apart from the training noise
LOG_STEP_STRIDE = 2_000_029
#: evaluation noise of the test split, offset from the validation split's (which uses ``seed`` itself)
TEST_OFFSET = 7_919
#: evaluation noise per batch (generator mode): ``+ EVAL_BATCH_STRIDE·batch_idx``
EVAL_BATCH_STRIDE = 104_729
#: evaluation noise per DDP rank (generator mode): ``+ EVAL_RANK_STRIDE·rank``
EVAL_RANK_STRIDE = 15_485_863
# (per-example evaluation noise needs no offset: the counter-based generator keys each stream by (seed, draw)
#  and counts examples by their dataset index, vdmlab.diffusion.noise)
#: FID sample seeds of the repeats (``fid.repeats``): ``+ FID_REPEAT_STRIDE·repeat``
FID_REPEAT_STRIDE = 7_919
#: FID samples are made in batches: batch b of repeat r draws with ``seed + 1 + FID_REPEAT_STRIDE·r +
#: FID_BATCH_STRIDE·b``, whichever rank makes it and whether or not it is written to disk (``fid.samples_dir``)
FID_BATCH_STRIDE = 1_000_033
#: ODE likelihood, per-example rows of the counter-based generator: Hutchinson probes ``id·P + p + ODE_PROBE_STRIDE·(seed + 1)``
ODE_PROBE_STRIDE = 7_000_003
#: ODE likelihood, dequantization noise ``id·S + s + ODE_DEQUANTIZATION_STRIDE·(seed + 1)`` for draw s of S
ODE_DEQUANTIZATION_STRIDE = 5_000_011
#: ODE likelihood: dequantization draw s evaluates its ODE under ``seed + ODE_DRAW_STRIDE·s``
ODE_DRAW_STRIDE = 1009
