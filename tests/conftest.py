"""Shared fixtures: each fixture family lives in its own module beside this file."""

from emulator_fixtures import *  # noqa: F403
from kafka_fixtures import *  # noqa: F403
