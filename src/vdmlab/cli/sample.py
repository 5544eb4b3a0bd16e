"""``python sample.py ckpt_path=... sampler=ddim sampler.steps=50``: a PNG grid and an .npz of EMA samples.

Class-conditional checkpoints take ``label=3`` (every sample of class 3) or ``labels=all`` (every class equally
often, a grid row per class), and ``sampler.guidance=w`` for classifier-free guidance. ``metrics.json`` holds the
FID of the samples against a split (digits-classifier features on the 8x8 digits) and, on the digits, the class
accuracy of the samples (the fraction that the shipped classifier assigns to the label they were drawn for) or, for
unconditional samples, their class histogram and its flatness, by the classifier and (``nn_class_*``) by the label
of each sample's nearest training image, which needs no classifier.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from torch import Tensor

from vdmlab.callbacks.samples import class_rows, save_samples
from vdmlab.cli.autoguidance import attach_guide
from vdmlab.cli.build import build_from_checkpoint, build_sampler
from vdmlab.cli.common import format_table, pick_device
from vdmlab.cli.diagnostics import copying_of
from vdmlab.cli.posthoc_ema import apply_posthoc_ema
from vdmlab.diffusion.likelihood import levels_to_values
from vdmlab.loggers import capture_warnings
from vdmlab.metrics.digits_classifier import class_matches
from vdmlab.metrics.fid import FIDMetric, fid_feature
from vdmlab.metrics.sample_metrics import class_counts, class_histogram, nearest_neighbour_classes

log = logging.getLogger("vdmlab")


def sample_labels(cfg: DictConfig, num_classes: int | None, device) -> tuple[Tensor | None, int | None]:
    """The labels to sample (``label=k``, ``labels=all`` or ``labels=[...]``, used cyclically) and the grid row length."""
    label, labels = cfg.get("label"), cfg.get("labels")
    if label is not None and labels is not None:
        raise ValueError(f"label={label} and labels={labels} were both given: use one of them")
    if label is not None:
        if isinstance(label, (ListConfig, list, str)) or int(label) != label:
            raise ValueError(f"label={label!r} is invalid: one class index, e.g. label=3 (or labels=all, labels=[0,3])")
        return torch.full((cfg.num_samples,), int(label), dtype=torch.long, device=device), None
    if labels is None:
        return None, None
    if labels == "all":
        if not num_classes:
            raise ValueError("labels=all: this checkpoint is an unconditional model, it takes no labels; drop labels=")
        return class_rows(num_classes, cfg.num_samples, device)
    if not isinstance(labels, (ListConfig, list)) or not len(labels):
        raise ValueError(f"labels={labels!r} is invalid: use labels=all or a list of class indices, e.g. labels=[0,3]")
    values = torch.as_tensor(list(labels), dtype=torch.long, device=device)
    return values[torch.arange(cfg.num_samples, device=device) % len(values)], None


def fid_and_class_accuracy(module, built, x: Tensor, labels: Tensor | None, cfg: DictConfig, device) -> dict[str, float]:
    """FID of the samples against ``metrics_split`` (with its sample count) and, on the digits, their class accuracy
    (class-conditional samples) and class histogram with its flatness (by the classifier, and by the nearest
    training image's label)."""
    feature = fid_feature(cfg.fid.feature, module.data_shape, module.num_levels)
    if cfg.metrics == "auto" and feature != "digits":
        return {}
    built.datamodule.setup()
    metric = FIDMetric(feature, cfg.fid.inception_path, reset_real_features=False).to(device)
    metric.update_from_dataset(getattr(built.datamodule, f"{cfg.fid.split}_set"), real=True,
                               batch_size=int(cfg.batch_size))
    for start in range(0, len(x), int(cfg.batch_size)):
        metric.update(x[start : start + int(cfg.batch_size)].to(device), real=False)
    values = metric.compute_dict()
    result = {"fid": values["fid"], "fid_n": values["fid_n"], "fid_n_real": values["fid_n_real"]}
    classifier = getattr(metric.extractor, "classifier", None)
    if labels is not None and classifier is not None:
        result["class_acc"] = float(class_matches(classifier, x.to(device), labels).float().mean())
    if classifier is not None:  # which digits were drawn, and how evenly (conditional: as the labels asked?)
        with torch.no_grad():
            logits = classifier(x.to(device).float())
        result.update(class_histogram(logits, logits.shape[1]))
        train_labels = getattr(built.datamodule, "train_labels", None)
        if train_labels is not None:  # the same histogram without the classifier: the nearest training image's label
            train = built.datamodule.train_set
            real = levels_to_values(train.levels, train.num_levels).to(device)
            nearest = nearest_neighbour_classes(x.to(device), real, train_labels)
            result.update(class_counts(nearest, logits.shape[1], prefix="nn_class"))
    return result


def run(cfg: DictConfig) -> Path:
    """Draw ``num_samples`` samples; returns the path of the .npz written into the run dir (and logs what it wrote
    to the console and sample.log)."""
    capture_warnings()
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples={cfg.num_samples} and batch_size={cfg.batch_size} must be >= 1")
    if cfg.metrics not in ("auto", True, False):
        raise ValueError(f"metrics={cfg.metrics!r} is invalid: auto (FID and class accuracy on the digits), true or false")
    device = pick_device(cfg.device)
    built = build_from_checkpoint(cfg.ckpt_path)
    module = built.module.to(device)
    with open_dict(cfg):  # the sampling schedule's endpoints default to the checkpoint's
        for key in ("logsnr_min", "logsnr_max"):
            if cfg.diffusion[key] is None:
                cfg.diffusion[key] = getattr(module.schedule, key)
    sampler = module.sampler = build_sampler(cfg)
    weights = {**apply_posthoc_ema(module, cfg.ckpt_path, cfg.get("ema")),
               **attach_guide(module, cfg.get("guide_ckpt"), device, cfg.get("guide_ema"))}
    labels, nrow = sample_labels(cfg, module.num_classes, device)
    labels = module.labels.check_sampling(labels, device)  # clear errors: labels for an unconditional model, none for others
    num_samples = cfg.num_samples if labels is None else len(labels)
    schedule = instantiate(cfg.sampling_schedule) if cfg.get("sampling_schedule") else None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    batches = []
    for start in range(0, num_samples, cfg.batch_size):
        n = min(cfg.batch_size, num_samples - start)
        batches.append(module.sample(n, schedule=schedule, generator=generator,
                                     labels=None if labels is None else labels[start : start + n]).cpu())
    x = torch.cat(batches)
    out = Path(cfg.paths.output_dir)
    if nrow is None:  # up to 256 samples in a square grid
        grid = save_samples(x[:256], out / "samples.png")
    else:  # labels=all: a row per class, its first 16 samples
        shown = min(nrow, 16)
        grid = save_samples(x.reshape(-1, nrow, *x.shape[1:])[:, :shown].flatten(0, 1), out / "samples.png", nrow=shown)
    npz = out / "samples.npz"
    extra = {} if labels is None else {"y": labels.cpu().numpy()}
    np.savez_compressed(npz, x=x.numpy(), ckpt_path=str(cfg.ckpt_path),
                        sampler=OmegaConf.to_yaml(cfg.sampler), seed=cfg.seed, **extra)
    metrics = {"num_samples": len(x), "steps": sampler.steps, **sampler.guidance_settings(), **weights}
    if cfg.metrics:
        metrics.update(fid_and_class_accuracy(module, built, x, labels, cfg, device))
    if cfg.get("copying"):  # near-copies of training images (docs/diagnostics.md)
        metrics.update(copying_of(x, built.datamodule, cfg.copying, cfg.fid.split))
    record = {"ckpt_path": str(cfg.ckpt_path), "guide_ckpt": cfg.get("guide_ckpt"), **metrics}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    log.info("%d samples from %s\n  grid: %s\n  array: %s (x in [-1, 1], shape %s%s)\n%s\n  metrics: %s", len(x),
             cfg.ckpt_path, grid, npz, tuple(x.shape), ", labels y" if labels is not None else "",
             format_table({k: v for k, v in metrics.items() if v is not None}), out / "metrics.json")
    return npz
