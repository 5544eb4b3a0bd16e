"""Shared test setup: the tests directory is importable (for ``oracles``) and torch uses few threads."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
