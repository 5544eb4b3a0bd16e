"""Small pieces shared by the evaluation and sampling commands."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def format_table(rows: dict[str, float | int | str]) -> str:
    """A two-column table for the terminal."""
    width = max((len(k) for k in rows), default=10)
    lines = [f"  {'metric':<{width}}  value", f"  {'-' * width}  ------"]
    for key, value in rows.items():
        lines.append(f"  {key:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    return "\n".join(lines)
