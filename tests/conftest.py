import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Two test workers share two cores: one thread each for torch/numpy here and in the processes
# the tests start (Ray's workers get the same from `cluster.connect`).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


def pytest_sessionstart(session):
    """The verifier tests need bubblewrap; install it from Debian's packages when missing."""
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
def loop():
    """One asyncio event loop for a module's async pools (a sandbox pool lives on one loop)."""
    import asyncio

    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the tests of one module (2 CPUs, as on the CI machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def uses_a_module_fixture(item: pytest.Item) -> bool:
    return any(definitions[-1].scope == "module" for definitions in item._fixtureinfo.name2fixturedefs.values())


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    """The quickstart tests (the longest) go first, so that the two test workers run them side by
    side and share out the rest, instead of one of them running alone at the end.

    A module with a module-scoped fixture (a Ray, a Ray head, a sandbox pool, a tiny model) runs
    on one test worker: spread over two, each would set the fixture up again, and two copies of
    machine-wide state collide (a head's address file, a pool's uids)."""
    items.sort(key=lambda item: item.path.name != "test_quickstart.py")  # stable: the rest keep their order
    shared = {item.path for item in items if uses_a_module_fixture(item)}
    for item in items:
        if item.path in shared:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
