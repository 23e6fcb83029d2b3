"""Fixtures shared by the orchestrator's pipeline tests."""

from __future__ import annotations

import os

import pytest

from trainables.data.splits import ACCESS_LOG_ENV


@pytest.fixture(scope="module")
def access_log(tmp_path_factory):
    """Every split any process materialises is logged here (set before Ray starts, so the
    Ray workers inherit it)."""
    path = tmp_path_factory.mktemp("access") / "splits.jsonl"
    os.environ[ACCESS_LOG_ENV] = str(path)
    yield path
    os.environ.pop(ACCESS_LOG_ENV, None)
