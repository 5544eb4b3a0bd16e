"""Evaluate a checkpoint: ``python eval.py ckpt_path=... [split=test]``: bits/dim and FID."""

import hydra
from omegaconf import DictConfig

from vdmlab.cli.evaluate import run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except KeyboardInterrupt:  # what was kept and how to resume is said where it happened
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
