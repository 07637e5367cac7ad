import os, pytest

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size models; run with SDFS_SLOW=1")

def pytest_collection_modifyitems(config, items):
    if os.environ.get("SDFS_SLOW"): return
    skip = pytest.mark.skip(reason="slow: set SDFS_SLOW=1 to run")
    for it in items:
        if "slow" in it.keywords: it.add_marker(skip)

def pytest_sessionstart(session):
    os.environ.setdefault("MPLBACKEND", "Agg")

@pytest.fixture(scope="module")
def one_thread():
    "Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP oversubscription makes them 10× slower."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
