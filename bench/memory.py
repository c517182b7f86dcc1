"""Memory rows: the peak resident memory of one real `python -m core train` process for plain_cnn-w1,
with the whole batch at once (the yardstick) against micro-batches, and where the fixed part of it goes.

Each figure is the process's own high-water mark (VmHWM), written by the process itself as it exits. The kernel's
rusage figure would not do: a child forked from this harness (torch loaded) inherits the parent's peak at exec."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from core.util.fsutil import PROJECT_ROOT

MICRO_BATCH = 16  # the micro-batch that keeps plain_cnn-w1 on FER2013 at or under 1 GiB on a 2-core CPU
MIB = 2**20

# Runs `-m module args...` or `-c code` as python would, and writes VmHWM (KiB) to a file at exit.
_PEAK_WRAPPER = r"""
import atexit, runpy, sys
out, argv = sys.argv[1], sys.argv[2:]
def report():
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(hwm)
atexit.register(report)
if argv[0] == "-c":
    sys.argv = ["-c"] + argv[2:]
    exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = [argv[1]] + argv[2:]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
"""


def python_peak_mib(args: list[str]) -> float:
    """Run `python *args` (`-m module ...` or `-c code`) to the end; its peak resident set size in MiB. Linux only
    (/proc); a failed run raises RuntimeError with the end of its stderr."""
    with tempfile.NamedTemporaryFile(suffix=".hwm") as out:
        res = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, out.name, *args], cwd=PROJECT_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
        if res.returncode != 0:
            raise RuntimeError(f"python {' '.join(args)[:200]} failed ({res.returncode}): {res.stderr[-800:]}")
        return int(Path(out.name).read_text()) / 1024


# Resident memory after each import or object a training process needs, in one fresh interpreter.
_STAGES = r"""
import json, sys
from core.training.memory import current_rss_bytes as rss
out = {"python": rss()}
import torch; out["import torch"] = rss()
import core.training.runs; out["import core.training.runs (the trainer)"] = rss()
opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]); out["first optimiser (imports torch._dynamo)"] = rss()
from core.data import load_data
data = load_data(sys.argv[1]); out["data loaded"] = rss()
print(json.dumps(out))
"""


def fixed_costs(data: str) -> list[tuple[str, float]]:
    """(stage, MiB added) for what every training process holds before its first step."""
    res = subprocess.run([sys.executable, "-c", _STAGES, data], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True, timeout=600)
    stages = list(json.loads(res.stdout.strip().splitlines()[-1]).items())
    return [(name, (now - before) / MIB) for (_, before), (name, now) in zip(stages, stages[1:])]


def train_peak_mib(data: str, micro_batch: int, steps: int, runs: Path) -> float:
    """plain_cnn-w1 at batch 256: `steps` steps, then the epoch's evaluation, the final evaluation and the export."""
    return python_peak_mib(["-m", "core", "train", "--arch", "plain_cnn", "--width", "1", "--data", data, "--epochs", "1",
                            "--max-steps", str(steps), "--batch-size", "256", "--micro-batch", str(micro_batch),
                            "--out", str(runs), "--quiet"])
