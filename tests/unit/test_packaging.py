"""The wheel holds the worker and the tooling it can run, and nothing that needs a checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ONLY = {"consumer/testing/localkafka.py", "consumer/testing/demo.py"}


def test_the_wheel_ships_every_module_but_the_source_only_tooling(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("consumer/")}
    source = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "consumer").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert source >= SOURCE_ONLY
    assert shipped == source - SOURCE_ONLY
    assert {"consumer/testing/emulator.py", "consumer/testing/workload.py"} <= shipped
