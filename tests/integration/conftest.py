"""Fixtures shared by the integration tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path: a home's status socket path must fit in the
    107 bytes a Unix socket address allows."""
    with tempfile.TemporaryDirectory(prefix="gl-") as d:
        yield Path(d)
