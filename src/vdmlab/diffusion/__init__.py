"""The paper's mathematics: pure functions and small classes, no Lightning import (design §4)."""

from vdmlab.diffusion import likelihood, losses, parameterization, process, sampling, schedules, weighting

__all__ = ["likelihood", "losses", "parameterization", "process", "sampling", "schedules", "weighting"]
