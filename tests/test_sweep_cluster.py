"""Sweeps against real Ray clusters started the way people start them (`ray start --head`): a sweep without --address
never joins a stranger's cluster, one that cannot start (dead address, too big a trial) says why in one line and in
sweep.json, and the README's cluster recipe, token authentication included, runs a trial on a joined node.

Each cluster has its own temp folder (RAY_TMPDIR, --temp-dir), its own ports and its own HOME (so its own
~/.ray/auth_token), and is ended by killing its own process group: `ray stop` would end every Ray on the machine."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from core.cli import main
from core.service import sweep

pytest.importorskip("ray", reason="Ray is optional; pip install -r requirements-dev.txt to test sweeps")
# Under pytest-xdist every Ray test runs on one worker, so no two Ray clusters start at once (one test starts a
# stranger's cluster on purpose and checks that a sweep never joins it)
pytestmark = pytest.mark.xdist_group("ray")

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
TINY = ["--arch", "plain_cnn", "--epochs", "1", "--synthetic-size", "200", "--width", "0.125", "--batch-size", "32",
        "--threads", "1", "--augment", "false"]
HANG_GUARD_S = 300  # a subprocess that runs longer than this hangs (the defects these tests pin); not a timing check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_home() -> Iterator[Path]:
    """A short folder (Ray's socket paths must stay under 107 characters, pytest's tmp_path is too deep)."""
    home = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """This test's Ray world: its temp folder (where ray.init looks for `ray start`'s cluster) and home (token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    (home / "home").mkdir(exist_ok=True)
    return {**env, "RAY_TMPDIR": str(home), "HOME": str(home / "home"), **extra}


class Node:
    """`ray start --block` in its own process group, so the test ends exactly the processes it started."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_started(self) -> None:
        """`ray start` prints this once its node has registered with the head."""
        for _ in range(HANG_GUARD_S):
            if "Ray runtime started" in self.log.read_text() or self.proc.poll() is not None:
                break
            time.sleep(1)
        assert "Ray runtime started" in self.log.read_text(), self.log.read_text()[-2000:]

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # as a crash would: no `ray stop`, the address file stays
        except ProcessLookupError:
            pass
        self.proc.wait()


def start_head(home: Path, env: dict[str, str], *args: str) -> tuple[Node, str]:
    """A head node in home/ray, and its address once `ray start` wrote it to home/ray/ray_current_cluster."""
    ports = [f"--{name}={free_port()}" for name in ("port", "dashboard-agent-listen-port", "runtime-env-agent-port",
                                                     "metrics-export-port")]
    head = Node(["--head", f"--temp-dir={home / 'ray'}", "--include-dashboard=false", *ports, *args], env,
                home / "head.log")
    address_file = home / "ray" / "ray_current_cluster"
    for _ in range(HANG_GUARD_S):
        if address_file.exists() and address_file.read_text().strip():
            return head, address_file.read_text().strip()
        if head.proc.poll() is not None:
            break
        time.sleep(1)
    head.stop()
    pytest.fail(f"ray start --head did not start: {head.log.read_text()[-2000:]}")


def run_sweep_cli(env: dict[str, str], runs: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "sweep", "--out", str(runs), "--quiet", *TINY, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def record(runs: Path, name: str) -> dict:
    return json.loads((runs / sweep.SWEEPS_DIR / name / sweep.SWEEP_FILE).read_text())


@pytest.mark.slow  # a head, and two sweeps that each start Ray: about a minute on 2 cores
def test_a_sweep_without_address_never_joins_a_strangers_cluster(ray_home: Path) -> None:
    """The load test's incident: another user's `ray start` cluster was joined (the record said "embedded"), and once
    it died without `ray stop`, the sweep retried it for ever. Here the stranger's address is in the very temp
    folder ray.init(address=None) reads, first alive and then dead."""
    env = env_for(ray_home, RAY_AUTH_MODE="disabled")
    stranger, stranger_address = start_head(ray_home, env, "--num-cpus=1")
    try:
        done = run_sweep_cli(env_for(ray_home), ray_home / "runs", "--name", "local", "--json")
    finally:
        stranger.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout.splitlines()[-1])
    assert state["state"] == "done" and state["address"] == "embedded"
    assert state["gcs_address"] != stranger_address and state["cluster"]["nodes"] == 1
    assert (ray_home / "ray" / "ray_current_cluster").read_text().strip() == stranger_address  # now stale

    again = run_sweep_cli(env_for(ray_home), ray_home / "runs", "--name", "local")  # a re-run: the trial is skipped
    assert again.returncode == 0, again.stderr[-3000:]
    (trial,) = record(ray_home / "runs", "local")["trials"]
    assert record(ray_home / "runs", "local")["address"] == "embedded" and trial["state"] == "done"
    assert f"val acc {trial['val_acc']:.4f}" in again.stdout.splitlines()[0], again.stdout  # from its run record


def test_auto_follows_only_this_users_ray_start_and_a_dead_one_is_refused_and_recorded(
        ray_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--address auto reads the temp folder's address file; a cluster that died without `ray stop` (nothing listens
    there) is one line and a failed record, not ray.init's ten minutes of retries. Ray's own 'auto' would instead
    have joined any other cluster running on the machine (as it did here, under the session's cluster)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_home))
    runs = ray_home / "runs"
    assert main(["sweep", "--out", str(runs), "--name", "none", *TINY, "--address", "auto"]) == 2
    assert capsys.readouterr().err == (f"error: --address 'auto': no cluster was started with `ray start` on this "
                                       f"machine (no {ray_home}/ray/ray_current_cluster); give the head's HOST:PORT\n")
    dead = f"127.0.0.1:{free_port()}"
    (ray_home / "ray").mkdir()
    (ray_home / "ray" / "ray_current_cluster").write_text(dead)
    assert main(["sweep", "--out", str(runs), "--name", "dead", *TINY, "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --address {dead!r}: no Ray head answers there") and err.count("\n") == 1, err
    state = record(runs, "dead")
    assert state["state"] == "failed" and state["error"] == err.strip().removeprefix("error: ")
    assert [t["state"] for t in state["trials"]] == ["pending"]


def test_an_address_that_answers_but_is_no_ray_head_fails_within_the_join_timeout(ray_home: Path) -> None:
    """A port that accepts connections and never speaks (a hung head, a wrong service): ray.init's own wait is 20
    tries of 30 s; the sweep bounds it. RAY_py_gcs_connect_timeout_s=2 (an operator's value wins over the sweep's
    JOIN_TIMEOUT_S) keeps the test short, while the number of tries is the sweep's own setting."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        failed = run_sweep_cli(env_for(ray_home, RAY_py_gcs_connect_timeout_s="2"), ray_home / "runs", "--name",
                               "silent", "--address", address)
    assert failed.returncode == 2
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --address {address!r}: cannot join a Ray cluster (") and "Traceback" not in \
        failed.stderr, failed.stderr[-3000:]
    state = record(ray_home / "runs", "silent")
    assert state["state"] == "failed" and state["error"] == last.removeprefix("error: ")


def test_an_address_where_nothing_listens_is_refused_and_recorded(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert main(["sweep", "--out", str(tmp_path), "--name", "nobody", *TINY, "--address", address]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --address {address!r}: no Ray head answers there (Connection refused); start one with "
                   "`ray start --head` or check the address\n")
    state = record(tmp_path, "nobody")
    assert state["state"] == "failed" and "no Ray head answers there" in state["error"]
    assert state["address"] == address
    # the Train page shows the failed sweep with its reason, not as running
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FER_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("pages/3_Train.py").run()
    assert not at.exception
    assert any(e.value == f"Sweep nobody failed: {state['error']}" for e in at.error), [e.value for e in at.error]


@pytest.mark.parametrize("flag, value", [("--cpus-per-trial", "64"), ("--gpus-per-trial", "1")])
def test_trials_bigger_than_any_node_are_refused_not_left_pending(flag: str, value: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Tune would keep such a trial pending for ever; the check runs on the cluster the sweep really got (Ray
    embedded here, or the session's cluster from test_sweep.py when that already runs in this process)."""
    assert main(["sweep", "--out", str(tmp_path), "--name", "big", *TINY, flag, value]) == 2
    err = capsys.readouterr().err
    want = "64 CPUs and 0 GPUs" if flag == "--cpus-per-trial" else "1 CPUs and 1 GPUs"
    assert err.startswith(f"error: each trial asks for {want} (--cpus-per-trial, --gpus-per-trial), more than any "
                          "node has: the cluster has ") and err.count("\n") == 1, err
    state = record(tmp_path, "big")
    assert state["state"] == "failed" and state["error"] == err.strip().removeprefix("error: ")
    assert all(t["state"] == "pending" for t in state["trials"])


@pytest.mark.slow  # two nodes and a sweep: about a minute on 2 cores
def test_the_readme_cluster_recipe_runs_a_trial_on_a_joined_node(ray_home: Path) -> None:
    """README, Sweeps: a token made once (`ray get-auth-token --generate`), RAY_AUTH_MODE=token on every node and
    for the sweep; the head holds no CPU here, so the trial can only run on the node that joined it."""
    env = env_for(ray_home, RAY_AUTH_MODE="token")
    made = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert made.returncode == 0 and (ray_home / "home" / ".ray" / "auth_token").is_file(), made.stderr
    head, address = start_head(ray_home, env, "--num-cpus=0")
    worker = Node([f"--address={address}", f"--temp-dir={ray_home / 'worker'}", "--num-cpus=1"], env,
                  ray_home / "worker.log")
    try:
        worker.wait_started()
        # the old recipe: the token is in ~/.ray/auth_token, but RAY_AUTH_MODE is not set where the sweep runs
        refused = run_sweep_cli(env_for(ray_home), ray_home / "runs", "--name", "recipe", "--address", address)
        failed = record(ray_home / "runs", "recipe")
        done = run_sweep_cli(env, ray_home / "runs", "--name", "recipe", "--address", address)
    finally:
        worker.stop()
        head.stop()
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "refused this sweep's token: set RAY_AUTH_MODE=token" in last, refused.stderr
    assert failed["state"] == "failed" and failed["error"] == last.removeprefix("error: ")
    assert done.returncode == 0, done.stderr[-3000:] + (ray_home / "worker.log").read_text()[-2000:]
    state = record(ray_home / "runs", "recipe")
    assert state["state"] == "done" and state["address"] == address and state["cluster"]["nodes"] == 2
    assert state["cluster"]["cpu"] == 1 and state["trials"][0]["epoch"] == 1
    assert "InvalidAuthToken" not in (ray_home / "worker.log").read_text()


NODE_DIES = """
import json, os, signal, sys
import ray
from ray import tune
from ray.cluster_utils import Cluster
from core.service import sweep

class KillTheNode(tune.Callback):  # SIGKILLs the trial's node (its raylet) once the first epoch is on disk
    def __init__(self, pids):
        self.pids = pids
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.pids and result.get("epoch") == 1 and not result.get("finished"):
            [os.kill(pid, signal.SIGKILL) for pid in self.pids]
            self.pids = []

# the head holds no CPU, so the trial runs on the other node; a dead node is noticed after 2 missed 1 s heartbeats
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": {
    "health_check_period_ms": 1000, "health_check_failure_threshold": 2, "health_check_initial_delay_ms": 0}})
node = cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
spec = sweep.SweepSpec("dies", {}, {**json.loads(sys.argv[2]), "epochs": 4, "synthetic_size": 3000}, [0])
kill = KillTheNode([p.process.pid for p in node.all_processes["raylet"]])
state = sweep.run_sweep(sweep.expand(spec), "dies", runs_root=sys.argv[1], quiet=True, max_failures=0,
                        callbacks=[kill])
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow  # a two-node cluster and a trial on the node that dies: about 40 s on 2 cores
def test_a_lost_node_ends_its_trial_with_one_line_not_rays_traceback(tmp_path: Path, ray_home: Path) -> None:
    tiny = {"arch": "plain_cnn", "width": 0.125, "batch_size": 32, "threads": 1, "augment": False}
    run = subprocess.run([sys.executable, "-c", NODE_DIES, str(tmp_path), json.dumps(tiny)], cwd=ROOT,
                         env=env_for(ray_home), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Trial task failed" not in run.stderr, run.stderr[-3000:]
    state = record(tmp_path, "dies")
    (trial,) = state["trials"]
    assert state["state"] == "failed" and state["failed_trials"] == [trial["run"]]
    assert trial["state"] == "failed" and "node" in trial["error"] and "\n" not in trial["error"]
    assert state["error"] == f"1 of 1 trials failed; {trial['run']}: {trial['error']}"
