import shutil
import subprocess
from pathlib import Path

import pytest


def pytest_sessionstart(session):
    """The verifier tests need bubblewrap; install it from Debian's packages when missing."""
    import os

    if shutil.which("bwrap") is None and shutil.which("apt-get") and os.geteuid() == 0:
        install = ["apt-get", "install", "-y", "-q", "bubblewrap"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(install, capture_output=True)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch working directory: ./mlruns and ./ray_results of a CLI run land here."""
    return tmp_path


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the tests of one module (2 CPUs, as on the CI machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
