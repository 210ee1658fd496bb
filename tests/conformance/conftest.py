"""What the conformance tests share: node, with the official SDK installed beside them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, once `npm ci` has installed the SDK here; skips without node and npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not on PATH; the SDK conformance tests need both")
    if not (HERE / "node_modules" / "@inkeep" / "inkeep-analytics").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=HERE,
            capture_output=True,
            timeout=600,
            check=False,
        )
        assert installed.returncode == 0, installed.stderr.decode(errors="replace")
    return node
