"""House rules that keep the codebase tidy: core never imports streamlit."""
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_core_does_not_import_streamlit() -> None:
    modules = sorted(p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__main__")
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module('core.' + m)\n"
            "assert 'streamlit' not in sys.modules, 'core imported streamlit'\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    for path in (ROOT / "core").glob("*.py"):
        text = Path(path).read_text()
        assert "import streamlit" not in text and "from streamlit" not in text, path
