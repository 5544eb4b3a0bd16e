"""Sample from a checkpoint: ``python sample.py ckpt_path=... sampler=ddim sampler.steps=50``."""

import hydra
from omegaconf import DictConfig

from vdmlab.cli.sample import run


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
