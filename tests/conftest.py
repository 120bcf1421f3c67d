"""Shared pytest setup: the --backend option that selects which lowering tests run."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", action="append", default=[],
                     help="backend(s) whose tests run (default: every installed one)")
