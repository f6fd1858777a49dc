"""The SLURM tests run one at a time on the one-node local cluster, whichever pytest process
(``pytest -n 2``'s workers) runs them; ``make test`` keeps them on one worker anyway
(tests/conftest.py's pytest_xdist_make_scheduler), so this lock waits only under other
``--dist`` modes or beside a second session."""

from __future__ import annotations

import pytest

from .cluster import CLUSTER_LOCK


@pytest.fixture(autouse=True)
def one_slurm_test_at_a_time():
    with CLUSTER_LOCK:
        yield
