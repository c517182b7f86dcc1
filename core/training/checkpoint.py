"""Weights I/O for run folders: atomic saving, and rebuilding a run's model from its record (loading is
rundir.load_state_dict, with weights_only=True, so listing folders can check weights without this module)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.models import archs
from core.training.record import ModelSpec, RunRecord
from core.training.rundir import WEIGHTS, load_state_dict, read_record
from core.util.fsutil import atomic_write_bytes


def save_state_dict(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def build_model(spec: ModelSpec, device: str | torch.device = "cpu") -> nn.Module:
    with torch.device(device):
        return archs.build(spec.arch, **spec.knobs)


def load_model(run_dir: str | Path) -> tuple[nn.Module, RunRecord]:
    """Rebuild a run's model from its record and load its weights (nanoGPT-style self-describing checkpoint)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    model = build_model(record.model)
    state = load_state_dict(run_dir / WEIGHTS)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        spec = {"arch": record.model.arch, "knobs": record.model.knobs}
        raise ValueError(f"{run_dir / WEIGHTS}: weights do not fit {spec} ({str(exc).splitlines()[0][:200]})") from None
    model.eval()
    return model, record
