import logging
import sys
from pathlib import Path

import pytest

# Shared test helpers (tests/support/) import by name under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """CLI mains call logging.basicConfig, which binds a handler to that test's captured stderr;
    a later test would then log into a closed stream. Put the root logger back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
