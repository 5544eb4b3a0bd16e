"""The paper's mathematics: pure functions and small classes, no Lightning import (docs/architecture.md, "The layers")."""

from vdmlab.diffusion import likelihood, losses, parameterization, process, sampling, schedules, weighting

__all__ = ["likelihood", "losses", "parameterization", "process", "sampling", "schedules", "weighting"]
