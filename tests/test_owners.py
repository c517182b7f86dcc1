"""Runs owned by the browser that started them: two browsers through two AppTest sessions, each
with its own identity token, on one runs folder; a reload keeps the identity, and with it the owner's rights and the
per-user queue limit; an operator token gives a teacher rights over every run."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import wait_for_status
from streamlit.testing.v1 import AppTest

from core.service import jobs, owners
from core.training import rundir

ALICE, BOB = "alice0000token", "bob000000token"
TEACHER_SECRET = "teacher-secret-1234"
ROOT = Path(__file__).resolve().parents[1]


def browser(user: str | None = None, page: str = "pages/3_Train.py", **params: str) -> AppTest:
    """A fresh session of one browser: `user` is what its cookie, or its URL where cookies are blocked, carries."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    if user:
        at.query_params["user"] = user
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def start(at: AppTest, name: str) -> None:
    """Start a run from the Train form that stays running long enough to be acted on (stopped by the test)."""
    at.selectbox(key="train_arch").set_value("plain_cnn")
    at.slider(key="train_width").set_value(0.125)
    at.number_input(key="train_epochs").set_value(50)
    at.number_input(key="train_time_budget_s").set_value(0)
    at.selectbox(key="train_batch_size").set_value(16)
    at.number_input(key="train_synthetic_size").set_value(3000)
    at.text_input(key="train_name").set_value(name)
    at.run()
    at.button(key="train_start").click().run()
    assert not at.exception


def button_keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key}


@pytest.fixture()
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - the runs folder; its runs stopped after
    monkeypatch.setenv("FER_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("FER_OPERATOR_TOKEN", raising=False)
    yield tmp_path
    for run in rundir.list_runs(tmp_path, include_shipped=False):
        if run.active:
            jobs.stop_run(run.path, kill=True)
    for run in rundir.list_runs(tmp_path, include_shipped=False):
        wait_for_status(run.path, ("stopped", "done", "failed", "interrupted"), timeout=120)


def test_only_the_starting_browser_may_stop_its_run_even_after_a_reload(runs: Path) -> None:
    alice = browser(ALICE)
    start(alice, "alice-run")
    assert not alice.error, [e.value for e in alice.error]
    run_dir = runs / "alice-run"
    assert owners.owner_of(run_dir) == ALICE
    wait_for_status(run_dir, ("starting", "running"), timeout=120)

    bob = browser(BOB)
    assert "stop_alice-run" not in button_keys(bob) and "cancel_alice-run" not in button_keys(bob)
    assert any(c.value == "another user's run" for c in bob.caption)

    alice_again = browser(ALICE)  # a reload: a new Streamlit session, the same browser
    assert "stop_alice-run" in button_keys(alice_again)
    alice_again.button(key="stop_alice-run").click().run()
    assert not alice_again.exception and not alice_again.error
    assert wait_for_status(run_dir, ("stopped", "done")).status == "stopped"

    # Compare offers a finished run for deletion to its owner alone
    bob_compare = browser(BOB, "pages/4_Compare.py")
    picks = [s for s in bob_compare.selectbox if s.key == "compare_delete_pick"]
    assert not picks or "alice-run" not in picks[0].options
    assert any("other users started are theirs to delete" in c.value for c in bob_compare.caption)
    alice_compare = browser(ALICE, "pages/4_Compare.py")
    assert "alice-run" in alice_compare.selectbox(key="compare_delete_pick").options


def test_a_click_after_the_run_changed_hands_does_nothing(runs: Path) -> None:
    """Ownership is checked when the click is handled, not only when the page was drawn."""
    alice = browser(ALICE)
    start(alice, "moved-run")
    run_dir = runs / "moved-run"
    wait_for_status(run_dir, ("starting", "running"), timeout=120)
    alice.run()
    owners.record_owner(run_dir, BOB)  # e.g. the folder was replaced by another user's run of the same name
    alice.button(key="stop_moved-run").click().run()
    assert not alice.exception and "stop_moved-run" not in button_keys(alice)
    assert rundir.run_status(run_dir).status in ("starting", "running")


def test_the_per_user_queue_limit_holds_across_reloads(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_MAX_QUEUED", "1")
    start(browser(ALICE), "alice-first")
    assert owners.owner_of(runs / "alice-first") == ALICE
    reloaded = browser(ALICE)
    start(reloaded, "alice-second")
    assert any("Could not start" in e.value for e in reloaded.error), [e.value for e in reloaded.error]
    assert not (runs / "alice-second").exists()  # a refused Start writes nothing
    bob = browser(BOB)  # another browser has a limit of its own
    start(bob, "bob-first")
    assert not bob.error, [e.value for e in bob.error]
    assert owners.owner_of(runs / "bob-first") == BOB


def test_the_operator_may_act_on_every_run(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_OPERATOR_TOKEN", TEACHER_SECRET)
    start(browser(ALICE), "student-run")
    run_dir = runs / "student-run"
    wait_for_status(run_dir, ("starting", "running"), timeout=120)
    teacher = browser(BOB, operator=TEACHER_SECRET)
    assert "operator" not in teacher.query_params  # the secret leaves the address bar
    assert any("Operator" in c.value for c in teacher.sidebar.caption)
    teacher.button(key="stop_student-run").click().run()
    assert not teacher.error, [e.value for e in teacher.error]
    assert wait_for_status(run_dir, ("stopped", "done")).status == "stopped"

    guesser = browser(BOB, operator="not-the-secret-at-all")
    assert any("operator link is not valid" in w.value for w in guesser.sidebar.warning)
    assert not any("Operator" in c.value for c in guesser.sidebar.caption)


def test_ownership_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FER_OPERATOR_TOKEN", raising=False)
    owned, unowned = tmp_path / "owned", tmp_path / "unowned"
    owned.mkdir(), unowned.mkdir()
    owners.record_owner(owned, ALICE)
    assert owners.may_control(owned, ALICE) and not owners.may_control(owned, BOB) and not owners.may_control(owned, None)
    assert owners.may_control(owned, BOB, operator=True)
    # a run from the CLI has no owner: everyone's on a single-user app, the operator's alone on a server with one
    assert owners.may_control(unowned, BOB)
    monkeypatch.setenv("FER_OPERATOR_TOKEN", TEACHER_SECRET)
    assert not owners.may_control(unowned, BOB) and owners.may_control(unowned, BOB, operator=True)
    assert owners.is_operator(TEACHER_SECRET) and not owners.is_operator("teacher-secret-12345")
    monkeypatch.setenv("FER_OPERATOR_TOKEN", "short")
    with pytest.raises(ValueError, match="FER_OPERATOR_TOKEN must be 12 to 64"):
        owners.is_operator("short")
    assert not owners.may_control(unowned, BOB)  # a mistyped token still means the server has an operator
    with pytest.raises(ValueError, match="not valid"):
        owners.record_owner(owned, "../../etc")
    (owned / owners.OWNER_FILE).write_text("{not json")
    assert owners.owner_of(owned) is None


def test_the_owner_is_on_disk_before_the_run_can_launch(tmp_path: Path) -> None:
    """The queue writes the owner into the run folder as it accepts the run, under its lock: the first pass that
    could launch it (here, at once) already finds it, so an app killed right after a Start leaves no unowned run."""
    from core.training import queue

    seen: list[str | None] = []
    runner = queue.Runner(launch=lambda config, folder, token: seen.append(owners.owner_of(folder)),
                          state=lambda folder, token: "alive")
    folder = tmp_path / "runs" / "mine"
    queue.submit({}, folder, runner, session=ALICE, files={owners.OWNER_FILE: owners.owner_entry(ALICE)})
    assert seen == [ALICE]


def test_another_user_cannot_continue_an_unfinished_run_by_its_name(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.training.config import TrainConfig
    from core.training.runs import run_training

    cfg = TrainConfig(arch="plain_cnn", width=0.125, epochs=2, synthetic_size=200, batch_size=32, augment=False)
    steps: list = []  # 7 steps an epoch: stopped inside the second, resumable under its name with its settings
    list(run_training(cfg, runs / "alices", on_batch=steps.append, should_stop=lambda: len(steps) >= 9))
    assert rundir.run_status(runs / "alices").status == "stopped"
    owners.record_owner(runs / "alices", ALICE)
    monkeypatch.setattr(jobs.queue, "schedule", lambda *a, **k: [])  # nothing launches: only the refusal matters
    with pytest.raises(ValueError, match="started by another user"):
        jobs.start_run(cfg, runs, "alices", session=BOB, owner=BOB)
    assert owners.owner_of(runs / "alices") == ALICE and not jobs.queue.waiting(runs)
    jobs.start_run(cfg, runs, "alices", session=ALICE, owner=ALICE)  # its owner may
    assert owners.owner_of(runs / "alices") == ALICE and len(jobs.queue.waiting(runs)) == 1
