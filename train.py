"""Train a variational diffusion model: ``python train.py [group=option ...] [key=value ...]``.

Examples: ``python train.py schedule=cosine weighting=sigmoid``; ``python train.py -m weighting=elbo,sigmoid,edm``.
"""

import hydra
from omegaconf import DictConfig

from vdmlab.cli.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
