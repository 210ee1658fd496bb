"""Upgrades and downgrades: the previous release and the current code in one consumer group.

The previous release is the commit in previous_release.txt (tag v0.1.0): the release
whose upgrade path `PLAN` follows, pinned so that tagging a new release does not change
what this test means; move it with the plan when the next upgrade path is written. It
is installed from git into a
venv of its own, cached under ~/.cache/inkeep-consumer/releases/<commit>, and runs as
`python -m consumer run` from outside the repository so the current code cannot shadow
it. `PLAN` is the supported procedure (docs/operations.md, "Upgrades and downgrades"),
one worker at a time: the current code first rolled out with `STATE_UPGRADE_FROM=0.1`
("compat": writes the previous release's whole records, reads both layouts), a
downgrade during that phase, then a second roll without it (the changelog layout).
A new version (or a new state format) is one more entry in `versions` or `PLAN`.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import (
    REPO,
    Worker,
    all_logged,
    assert_matches,
    committed_to_the_end,
    conversation,
    expected_bodies,
    fresh,
    history_only_grows,
    interleave,
    produce,
    read_all,
    wait_for,
)
from kafka_fixtures import make_topic

from consumer.testing.emulator import Emulator

pytestmark = pytest.mark.integration

CACHE = Path.home() / ".cache" / "inkeep-consumer" / "releases"
RECORDED = Path(__file__).with_name("previous_release.txt")

PLAN: list[tuple[str, str]] = [
    ("previous", "previous"),  # the fleet before the upgrade
    ("compat", "previous"),  # phase 1: the first worker rolled, writing the old layout
    ("compat", "compat"),  # phase 1 done
    ("previous", "compat"),  # a downgrade during phase 1: safe
    ("compat", "compat"),  # phase 1 again
    ("current", "compat"),  # phase 2: the first worker writes the changelog layout
    ("current", "current"),  # upgrade done; no downgrade to the previous release from here
]
"""The two workers' versions at each step; each step also sends a turn of every conversation."""

COMPAT = {"STATE_UPGRADE_FROM": "0.1"}

CONVERSATIONS = 6


def layout(record: Any) -> str:
    """`whole` for a state record the previous release reads (a UTF-8 key, a `P`/`Z` value or
    a tombstone), `log` for one of the changelog layout (a segment key or an `L` head)."""
    try:
        record.key.decode()
    except UnicodeDecodeError:
        return "log"
    return "whole" if record.value is None or record.value[:1] in (b"P", b"Z") else "log"


def previous_release() -> str:
    """The full hash of the release the upgrade path starts from (previous_release.txt)."""
    ref = RECORDED.read_text().strip()
    commit = subprocess.run(
        ["git", "rev-parse", f"{ref}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        pytest.fail(f"the previous release {ref} is not in this clone: {commit.stderr.strip()}")
    return commit.stdout.strip()


def install(commit: str) -> Path:
    """The python of a venv holding `commit` installed from git (built once, then cached)."""
    home = CACHE / commit
    python = home / "venv" / "bin" / "python"
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # Parallel runs wait for one build.
        if (home / ".ready").exists():
            return python
        shutil.rmtree(home / "venv", ignore_errors=True)
        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / "src.tar"
            subprocess.run(
                ["git", "archive", "--format=tar", "-o", str(archive), commit],
                cwd=REPO,
                check=True,
            )
            with tarfile.open(archive) as tar:
                tar.extractall(Path(scratch) / "src", filter="data")
            subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", str(Path(scratch) / "src")],
                check=True,
            )
        (home / ".ready").write_text(commit + "\n")
    return python


@pytest.fixture(scope="session")
def versions(tmp_path_factory) -> dict[str, tuple[str, Path, dict[str, str]]]:
    """Version name -> (python, working directory, extra variables) to run `python -m consumer`."""
    outside = tmp_path_factory.mktemp("released")  # No consumer/ here to shadow the install.
    return {
        "previous": (str(install(previous_release())), outside, {}),
        "compat": (sys.executable, REPO, COMPAT),
        "current": (sys.executable, REPO, {}),
    }


@dataclass
class VersionedWorker(Worker):
    """A harness worker run by a given python from a given directory."""

    python: str = sys.executable
    cwd: Path = REPO
    version: str = "current"

    def start(self) -> VersionedWorker:
        assert self.process is None or self.process.poll() is not None
        from harness import free_port  # noqa: PLC0415

        self.http_port = free_port()
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [self.python, "-m", "consumer", "run"],
                cwd=self.cwd,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def assigned(self) -> bool:
        """This start has logged an assignment with partitions in it (fails if it exited)."""
        import msgspec  # noqa: PLC0415

        assert self.log_path is not None
        lines = self.log_path.read_bytes().splitlines()
        if not self.alive():
            tail = b"\n".join(lines[-5:]).decode(errors="replace")
            raise AssertionError(f"{self.name} ({self.version}) exited:\n{tail}")
        for raw in lines:
            with contextlib.suppress(msgspec.DecodeError):
                line: dict[str, Any] = msgspec.json.decode(raw)
                if line.get("event") == "partitions_assigned" and line.get("partitions"):
                    return True
        return False


async def test_rolling_upgrade_and_downgrade_log_every_conversation_whole(
    versions, kafka, emulator: Emulator, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await make_topic(bootstrap, 2)
    group = fresh("upgrade")
    slots: list[VersionedWorker | None] = [None, None]
    sent: list[dict[str, Any]] = []
    try:
        for step, wanted in enumerate(PLAN):
            for slot, version in enumerate(wanted):
                running = slots[slot]
                if running is not None and running.version == version:
                    continue
                if running is not None:
                    code, _ = await running.terminate()
                    assert code == 0, f"{running.name} ({running.version}) exited {code}"
                python, cwd, extra = versions[version]
                worker = VersionedWorker(
                    bootstrap,
                    topic,
                    emulator.url,
                    tmp_path,
                    group=group,
                    extra=extra,
                    name=f"s{slot}-{step}-{version}",
                    python=python,
                    cwd=cwd,
                    version=version,
                ).start()
                slots[slot] = worker
                await wait_for(worker.assigned, 60, f"{worker.name} to be given a partition")
            last = step == len(PLAN) - 1
            batch = interleave(
                conversation(f"u{i}", 1, start=step, ended=last, history="delta")
                for i in range(CONVERSATIONS)
            )
            await produce(bootstrap, topic, batch)
            sent += batch
            so_far = expected_bodies(sent, tmp_path)
            total = len(sent)
            await wait_for(
                lambda so_far=so_far: all_logged(emulator, so_far),
                60,
                f"step {step} {wanted}: every conversation logged whole",
            )
            await wait_for(
                lambda total=total: committed_to_the_end(bootstrap, group, topic, total),
                60,
                f"step {step} {wanted}: offsets committed",
            )
            layouts = {layout(record) for record in await read_all(bootstrap, f"{topic}.state")}
            changelog_ran = any("current" in versions for versions in PLAN[: step + 1])
            assert layouts == ({"whole", "log"} if changelog_ran else {"whole"}), (step, layouts)
        for worker in slots:
            assert worker is not None
            assert worker.alive(), f"{worker.name} died during the roll"
    finally:
        for worker in slots:
            if worker is not None:
                worker.stop_now()
    assert_matches(emulator.conversations, expected_bodies(sent, tmp_path))
    history_only_grows(emulator)
