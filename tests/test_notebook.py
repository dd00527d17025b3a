"""notebooks/explore.ipynb runs top to bottom against sample_logs/ (so it never rots)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (test extra)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (test extra)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (test extra)")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"
CANONICAL = ROOT / "sample_logs" / "canonical"


def test_explore_notebook_runs(tmp_path, monkeypatch):
    logs = CANONICAL if CANONICAL.is_dir() else ROOT / "tests" / "data" / "report" / "cases.csv"
    config = ROOT / "sample_logs" / "tenant.toml"
    monkeypatch.setenv("RELAY_IMPACT_LOGS", str(logs))
    monkeypatch.setenv("RELAY_IMPACT_CONFIG", str(config))
    monkeypatch.setenv("RELAY_IMPACT_WORKDIR", str(tmp_path / "out"))
    monkeypatch.delenv("RELAY_IMPACT_SKIP_RUN", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "messages;" in text and "sender:" in text and "host:" in text and "reason:" in text
    if _has_matplotlib():  # the charts are drawn (inline backend of the kernel)
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
