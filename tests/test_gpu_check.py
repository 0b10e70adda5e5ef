"""The GPU check's script runs (on CPU, tiny sizes) inside the test suite, so it never rots: every part runs,
the CPU-only checks pass, the GPU-only parts say why they were skipped, the report is one JSON file."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_gpu_check_smoke_mode_writes_one_report(tmp_path):
    out = tmp_path / "gpu-check.json"
    r = subprocess.run([sys.executable, "-m", "ahps.cli", "bench", "gpu", "--smoke", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["device"] == "cpu" and report["ok"] is True
    checks = report["checks"]
    assert checks["loader"]["ok"] and checks["loader"]["crops"] and checks["loader"]["resumable"]
    assert checks["divergence"]["ok"] and checks["divergence"]["in_pack"] is not None
    assert "CPU" in checks["no_sync_in_step"]["skipped"] and "CPU" in checks["graphs_vs_eager"]["skipped"]
    for name in ("largest", "mean"):
        cell = report["cells"][name]
        for layout in ("on", "off"):
            row = cell[f"train_channels_last_{layout}"]
            assert row["naive_images_per_s"] > 0 and row["ours_fp32_images_per_s"] > 0
        assert cell["step_modes"]["eager"]["images_per_s"] > 0 and "skipped" in cell["step_modes"]["graphs"]
        assert set(cell["stacked"]) == {"1", "2"} and all(v["images_per_s"] > 0 for v in cell["stacked"].values())
        projection = report["projection_arch_per_gpu_hour"][name]
        assert set(projection) == {"naive", "one_model", "stacked", "concurrent"}
    assert report["cells"]["mean"]["concurrent"]["2"]["images_per_s"] > 0
    assert "passed" in r.stdout and "architectures per GPU-hour" in r.stdout
