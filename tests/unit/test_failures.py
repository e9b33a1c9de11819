"""Which trial failures Tune retries (what befell the trial) and which fail once (what its
inputs or code do), on the exceptions each case really raises."""

import errno

import pytest
import ray.exceptions
import torch.distributed
from ray.train import WorkerGroupError
from ray.train.v2.api.exceptions import ControllerError

from rankstudy.core.spec import SpecError
from rankstudy.trial.checkpoint import CorruptCheckpoint
from rankstudy.trial.failures import failure_reason, retry_can_fix
from rankstudy.trial.lifecycle import TrialFailed


def raised(error: BaseException) -> BaseException:
    """The error with the traceback of a real raise."""
    try:
        raise error
    except BaseException as e:
        return e


def remote(error: BaseException) -> BaseException:
    """What Ray raises in the caller when remote code raised `error`."""
    return ray.exceptions.RayTaskError("f", "traceback", error).as_instanceof_cause()


RETRIED = [
    OSError(errno.ENOSPC, "No space left on device"),
    ConnectionResetError("peer gone"),
    TimeoutError("store timed out"),
    CorruptCheckpoint("checkpoint step4 cannot be read"),
    ray.exceptions.ActorDiedError(),
    ray.exceptions.NodeDiedError("node gone"),
    torch.distributed.DistBackendError("connection closed by peer"),
    WorkerGroupError("lost", {0: ray.exceptions.ActorDiedError(), 1: ConnectionError("peer")}),
    ControllerError(ray.exceptions.ActorDiedError()),
    remote(ConnectionResetError("reset")),
]
NOT_RETRIED = [
    TrialFailed("gradients are non-finite at step 1"),
    ValueError("train: line 2 has no string field 'response'"),
    SpecError("model.attn_implementation: flash_attention_2 needs flash-attn"),
    ImportError("No module named 'flash_attn'"),
    KeyError("lm_head"),
    TypeError("forward() got an unexpected keyword argument"),
    AssertionError(),
    # one worker's own error, the other failing on its lost peer: the first decides
    WorkerGroupError("w0", {0: ValueError("bad batch"), 1: torch.distributed.DistError("peer")}),
    ControllerError(TypeError("a bug")),
    remote(ValueError("bad data")),
]


@pytest.mark.parametrize("error", RETRIED, ids=lambda e: type(e).__name__)
def test_what_befell_the_trial_is_retried(error):
    assert retry_can_fix(error)


@pytest.mark.parametrize("error", NOT_RETRIED, ids=lambda e: type(e).__name__)
def test_what_its_inputs_or_code_do_is_not(error):
    assert not retry_can_fix(error)


def test_the_reason_names_the_error_where_it_was_raised_and_that_it_was_not_retried():
    reason = failure_reason(raised(KeyError("lm_head")))
    assert reason.startswith("KeyError: 'lm_head' (raised at test_failures.py:")
    assert reason.endswith(", in raised); not retried: a retry cannot fix it")
    # the trial's own failures keep their message as they were
    assert failure_reason(TrialFailed("gradients are non-finite at step 1")) == (
        "gradients are non-finite at step 1"
    )
