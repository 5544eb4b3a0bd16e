"""Sample from a checkpoint: ``python sample.py ckpt_path=... sampler=ddim sampler.steps=50``."""

import hydra
from omegaconf import DictConfig

from vdmlab.cli.common import stop_cleanly_on_ctrl_c
from vdmlab.cli.sample import run


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    stop_cleanly_on_ctrl_c("sample.py", lambda: run(cfg), "it writes samples.npz, samples.png and metrics.json")


if __name__ == "__main__":
    main()
