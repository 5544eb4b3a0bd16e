"""Evaluate a checkpoint: ``python eval.py ckpt_path=... [split=test]``: bits/dim and FID."""

import hydra
from omegaconf import DictConfig

from vdmlab.cli.common import stop_cleanly_on_ctrl_c
from vdmlab.cli.evaluate import run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    stop_cleanly_on_ctrl_c("eval.py", lambda: run(cfg), "it writes metrics.json and logs its metrics")


if __name__ == "__main__":
    main()
