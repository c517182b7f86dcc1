"""The Compress page through AppTest (from streamlit_app.py): its controls, the plain warning about unstructured
zeros, bad input shown as st.error, and a background fp16 job end to end on a tiny run."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.service import compress_jobs
from core.util.fsutil import runs_dir

PAGE = "pages/7_Compress.py"


def page() -> AppTest:
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def test_controls_and_the_plain_warning(tiny_run: Path) -> None:
    shutil.copytree(tiny_run, runs_dir() / "page-tiny", dirs_exist_ok=True)
    at = page()
    assert any(t.value == "Compress" for t in at.title)
    assert any(o.startswith("page-tiny") for o in at.selectbox(key="compress_run").options)
    # the form is generated from CompressConfig's fields, with their defaults (int8 on in the form)
    assert at.checkbox(key="compress_int8").value is True and at.checkbox(key="compress_fp16").value is False
    assert at.number_input(key="compress_prune").value == 0 and at.checkbox(key="compress_structured").value is False
    assert at.selectbox(key="compress_int8_calibrate").options == ["minmax", "entropy", "percentile"]
    assert at.checkbox(key="compress_int8_reduce_range").value is True
    assert any("saves **no time**" in i.value and "gzip" in i.value for i in at.info)


def test_no_technique_is_an_error_not_a_traceback(tiny_run: Path) -> None:
    shutil.copytree(tiny_run, runs_dir() / "page-tiny", dirs_exist_ok=True)
    at = page()
    at.selectbox(key="compress_run").select("page-tiny")
    at.checkbox(key="compress_int8").uncheck()
    at.button(key="compress_start").click().run()
    assert not at.exception
    assert any("no technique chosen" in e.value for e in at.error)


def test_background_fp16_job_shows_its_variant(tiny_run: Path) -> None:
    shutil.copytree(tiny_run, runs_dir() / "page-tiny", dirs_exist_ok=True)
    at = page()
    at.selectbox(key="compress_run").select("page-tiny")
    at.checkbox(key="compress_int8").uncheck()
    at.checkbox(key="compress_fp16").check()
    at.button(key="compress_start").click().run()
    assert not at.exception and any("Started: fp16 of `page-tiny`" in s.value for s in at.success)
    job = compress_jobs.list_jobs()[0]
    deadline = time.monotonic() + 240
    while job.status == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        job = compress_jobs.job_state(job.path)
    assert job.status == "done", (job.error, (job.path / "log.txt").read_text()[-1500:])
    assert (runs_dir() / "page-tiny--fp16" / "model.onnx").is_file()
    at = page()
    assert any("page-tiny--fp16" in s.value for s in at.success)
    tables = [d.value for d in at.dataframe if "technique" in d.value.columns]
    assert tables and "page-tiny--fp16" in tables[0]["name"].tolist()


def test_variant_on_other_data_than_its_parent_is_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shipped FER2013 model compressed on synthetic faces: its variant lands in the runs folder, and the page says
    its accuracy was measured on other data than the parent was trained on."""
    from core.compression.compress import CompressConfig, compress_run

    # a runs folder of its own: test_compress leaves a synthetic int8 variant of the same model in the session's one
    monkeypatch.setenv("FER_RUNS_DIR", str(tmp_path / "runs"))
    from core.util.fsutil import SHIPPED_DIR

    compress_run(SHIPPED_DIR / "plain_cnn-w0.125", CompressConfig(fp16=True, data="synthetic", repeats=3), force=True)
    assert (runs_dir() / "plain_cnn-w0.125--fp16").is_dir() and not (SHIPPED_DIR / "plain_cnn-w0.125--fp16").exists()
    at = page()
    (warn,) = [w.value for w in at.warning if "other data than their parent" in w.value]
    assert "`plain_cnn-w0.125--fp16` (on synthetic)" in warn and "plain_cnn-w0.125--int8`" not in warn
    tables = [d.value for d in at.dataframe if "technique" in d.value.columns]
    assert "data" in tables[0].columns
    # one size-accuracy chart per data set: synthetic val and FER2013 public accuracies never share a front
    charts = [c for c in at.get("vega_lite_chart") if "measured on" in str(c.proto.spec)]
    titles = {t for t in ("measured on synthetic faces", "measured on data/fer2013") if any(t in str(c.proto.spec) for c in charts)}
    assert len(charts) >= 2 and len(titles) == 2, titles


def test_a_waiting_job_shows_its_place_and_a_refused_one_an_error(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Compressions wait in the runs folder's queue: with the only slot taken, the page says queued and its place,
    Cancel takes it out; past the user's $FER_MAX_QUEUED, the page shows the refusal, no traceback."""
    from conftest import slot_taken

    from core.training import queue

    root = tmp_path / "runs"
    monkeypatch.setenv("FER_RUNS_DIR", str(root))
    monkeypatch.setenv("FER_MAX_RUNS", "1")
    monkeypatch.setenv("FER_MAX_QUEUED", "1")
    with slot_taken(root):
        at = page()
        at.selectbox(key="compress_run").select("plain_cnn-w0.125")
        at.checkbox(key="compress_int8").uncheck()
        at.checkbox(key="compress_fp16").check()
        at.button(key="compress_start").click().run()
        assert not at.exception, at.exception
        assert any("Queued (place 1)" in i.value for i in at.info), [i.value for i in at.info]
        (job,) = compress_jobs.list_jobs(root)
        assert job.status == "queued" and any(f"`{job.path.name}`" in i.value and "queued (place 1)" in i.value
                                              for i in at.info)
        at.button(key="compress_start").click().run()  # the same again at once: a double-click, one job
        assert not at.exception and not at.error, (at.exception, at.error)
        assert any(i.value.startswith("Already started: compression") for i in at.info), [i.value for i in at.info]
        assert len(compress_jobs.list_jobs(root)) == 1
        at.checkbox(key="compress_int8").check()
        at.button(key="compress_start").click().run()  # another one: this browser already has one waiting
        assert not at.exception, at.exception
        assert any("you already have 1 job queued or running" in e.value and "$FER_MAX_QUEUED" in e.value
                   for e in at.error), [e.value for e in at.error]
        at.button(key=f"cancel_{job.path.name}").click().run()
        assert not at.exception and not queue.waiting(root) and compress_jobs.list_jobs(root) == []
