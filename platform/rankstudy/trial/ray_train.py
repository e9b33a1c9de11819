"""Run a trial on Ray Train workers: a TorchTrainer whose workers each run `run_trial`.

Ray Train starts the workers and their gloo/nccl process group; DeepSpeed wraps that group.
The study's Tune function calls this for each trial (the Train V2 pattern: a trainer is
started from a Tune function, never handed to a Tuner).
"""

from __future__ import annotations

from rankstudy.core.records import RESULT_FILE, TrialConfig, TrialResult, read_result
from rankstudy.core.spec import StudySpec
from rankstudy.storage.folders import trial_storage
from rankstudy.trial.lifecycle import run_trial


def scaling_config(spec: StudySpec):
    """One Ray Train worker per device: a GPU each (nccl) on GPU specs, CPUs (gloo) else."""
    from ray.train import ScalingConfig

    r = spec.resources
    return ScalingConfig(
        num_workers=r.workers,
        use_gpu=r.use_gpu,
        resources_per_worker=r.worker,
    )


def fit_trial(config: TrialConfig, storage_path: str, name: str) -> TrialResult:
    """Train and score one trial on `resources.workers` Ray Train workers; returns its
    result.json, as run_trial does. The driver must already be connected to Ray (ray.init)."""
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"trial": config},  # pickled whole: the spec stays resolved
        scaling_config=scaling_config(config.spec),
        run_config=RunConfig(storage_path=storage_path, name=name),
    )
    outcome = trainer.fit()
    if outcome.error is not None:
        raise outcome.error
    storage = trial_storage(config)
    result = storage.local(config.out_dir) / RESULT_FILE
    storage.pull(result)  # rank 0 may have run on another node
    return read_result(result)


def train_worker(loop_config: dict) -> None:
    """One Ray Train worker's part of the trial (Ray Train hands its loop a dict)."""
    run_trial(loop_config["trial"])
