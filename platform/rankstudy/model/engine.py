"""DeepSpeed for a trial: the config from the spec, the process group, the engine.

One code path for laptops and clusters: on CPUs the engine runs fp32 over gloo; on GPUs bf16
over nccl, with the ZeRO stage from the spec. Under Ray Train the process group already
exists and DeepSpeed wraps it; alone, the trial starts a one-process group itself.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import ninja
import torch
from torch import nn

from rankstudy.core.spec import StudySpec


def use_this_venvs_build_tools() -> None:
    """DeepSpeed JIT-builds a CPU comm op on first use (init_distributed), with torch's cpp
    extensions: set where and with what, in this process (and the trial processes it starts),
    before that.

    A cache per environment keeps two checkouts (two venvs) from rebuilding it for each other
    on every start. torch builds it with the first `ninja` on PATH: a system ninja (1.11) and
    the venv's (1.13) hash the build log differently, so every process that found the other one
    rebuilt the op (25-50 s while every other trial waited on the lock): the venv's ninja goes
    first everywhere."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    if os.environ.get("PATH", "").split(os.pathsep)[0] != ninja.BIN_DIR:
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def import_deepspeed():
    """The deepspeed module, imported without the MLflow its autotuner imports with it (about
    2 s of CPU in every trial process). A trial never autotunes, and only the study's driver
    writes to MLflow. While deepspeed imports, `import mlflow` fails as for a package not
    installed (a None in sys.modules), which its autotuner catches; afterwards it imports as
    usual. A process that has MLflow already shares it."""
    if "deepspeed" not in sys.modules and "mlflow" not in sys.modules:
        sys.modules["mlflow"] = None
        try:
            import deepspeed
        finally:
            del sys.modules["mlflow"]
    import deepspeed

    return deepspeed


def build_comm_op() -> bool:
    """Build (or find built) DeepSpeed's CPU comm op, as a trial's engine would; False where
    this accelerator has no such op. `jobs/setup.sh` calls it so no trial pays for the build."""
    use_this_venvs_build_tools()
    import_deepspeed()
    from deepspeed.comm.torch import build_shm_op

    return build_shm_op() is not None


def use_gpu(spec: StudySpec) -> bool:
    return spec.resources.use_gpu and torch.cuda.is_available()


def precision(spec: StudySpec, gpu: bool) -> str:
    """bf16 on GPUs that compute in it, else fp32, unless the spec insists."""
    if spec.deepspeed.precision == "auto":
        return "bf16" if gpu and torch.cuda.is_bf16_supported() else "fp32"
    return spec.deepspeed.precision


def model_dtype(spec: StudySpec, gpu: bool) -> torch.dtype:
    """The dtype the trial casts the model to: bf16 under both bf16 precisions."""
    return torch.float32 if precision(spec, gpu) == "fp32" else torch.bfloat16


def bf16_config(spec: StudySpec, gpu: bool) -> dict:
    """DeepSpeed's bf16 section. bf16 keeps fp32 master weights and fp32 AdamW state in its
    optimizer; bf16_pure asks its ZeRO optimizer for bf16 ones instead, so parameters,
    gradients, AdamW's exp_avg and exp_avg_sq are all bf16 and no fp32 copy exists, as in the
    reference code's HF Trainer on a model loaded in bf16 (ZeRO stage 1-3 only: the spec
    refuses stage 0 and optimizer offload)."""
    mode = precision(spec, gpu)
    if mode == "bf16_pure":
        return {
            "enabled": True,
            "bf16_master_weights_and_grads": True,
            "bf16_optimizer_states": True,
        }
    return {"enabled": mode == "bf16"}


def deepspeed_config(spec: StudySpec, world_size: int, gpu: bool) -> dict:
    """The DeepSpeed config dict. AdamW is torch's (no compiled ops needed on any machine)."""
    t, ds = spec.training, spec.deepspeed
    zero: dict = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero |= {"overlap_comm": gpu, "contiguous_gradients": True}
    if ds.offload_optimizer and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    config = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "weight_decay": t.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "torch_adam": True,
            },
        },
        "zero_optimization": zero,
        "bf16": bf16_config(spec, gpu),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if t.max_grad_norm > 0:
        config["gradient_clipping"] = t.max_grad_norm
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(gpu: bool) -> tuple[int, int]:
    """Join the existing process group (Ray Train) or start a one-process one. (rank, world)."""
    import torch.distributed as dist

    use_this_venvs_build_tools()
    deepspeed = import_deepspeed()
    backend = "nccl" if gpu else "gloo"
    if not dist.is_initialized():
        # A private one-process group on a free port; no MASTER_PORT goes into os.environ, so child
        # processes (and a second trial in this process) never inherit a taken port.
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine insists on it
        port = _free_port()
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
        )
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return dist.get_rank(), dist.get_world_size()


def build_engine(model: nn.Module, spec: StudySpec, world_size: int, gpu: bool, lr_lambda):
    """Wrap the adapted model in a DeepSpeed engine; lr_lambda(step) -> multiplier of lr."""
    deepspeed = import_deepspeed()
    params = [p for p in model.parameters() if p.requires_grad]
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=params,
        config=deepspeed_config(spec, world_size, gpu),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
    )
    return engine, optimizer, scheduler


def gather_partitioned(params: list[nn.Parameter]):
    """A context in which ZeRO-3's partitioned parameters are whole on every worker (a no-op
    for parameters DeepSpeed does not partition)."""
    import contextlib

    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    return import_deepspeed().zero.GatheredParameters(params)
