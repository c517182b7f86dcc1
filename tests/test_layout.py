"""House rules that keep the codebase tidy: core never imports streamlit."""
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_core_does_not_import_streamlit() -> None:
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "core").rglob("*.py") if p.stem != "__main__")
    assert "core.training.rundir" in modules and "core.views" in modules
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "assert 'streamlit' not in sys.modules, 'core imported streamlit'\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    for path in (ROOT / "core").rglob("*.py"):
        text = Path(path).read_text()
        assert "import streamlit" not in text and "from streamlit" not in text, path
