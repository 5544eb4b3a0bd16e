"""Lightning callbacks: sample grids and schedule/weighting plots."""

from vdmlab.callbacks.plots import SchedulePlot, plot_schedule_and_weighting
from vdmlab.callbacks.samples import SampleGrid, save_samples

__all__ = ["SampleGrid", "SchedulePlot", "plot_schedule_and_weighting", "save_samples"]
