from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch working directory: ./mlruns and ./ray_results of a CLI run land here."""
    return tmp_path
