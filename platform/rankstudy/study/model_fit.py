"""The spec against the model it applies to, before any compute.

A field can be valid alone and impossible on its model: a planted rank of 64 on 32-wide
matrices runs and plants nothing above rank 32; an adapter rank above the matrices it adapts
trains directions that do not exist; a sequence longer than the model's positions fails deep in
a forward pass. Each is refused here, naming the field and the model's own figure, from the
model's architecture (rankstudy.model.architecture: its config, no weights).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from rankstudy.core.errors import InputError
from rankstudy.core.spec import SpecError, StudySpec
from rankstudy.model.architecture import Architecture, read_architecture
from rankstudy.study.ray_cluster import answers


def model_source(spec: StudySpec) -> str:
    m = spec.model
    return "model.tiny" if m.tiny else f"model.gguf {m.gguf}" if m.gguf else f"model {m.name}"


def config_within_reach(name: str | None) -> bool:
    """Whether a model's config can be read here without minutes of retries: a local folder,
    a hub id already cached, or a hub that answers."""
    if name is None or Path(name).exists():
        return True
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return True
    return hub_answers()


def hub_answers() -> bool:
    """Whether the Hugging Face hub is reachable from here (not offline, and it answers a
    bounded probe)."""
    from huggingface_hub import constants

    hub = urlparse(constants.ENDPOINT)
    return not constants.HF_HUB_OFFLINE and answers(f"{hub.hostname}:{hub.port or 443}")


def smallest(matrices: dict[str, tuple[int, int]], kind: str) -> tuple[int, str]:
    """The fewest rows or columns among matrices, and a phrase that names that matrix."""
    side, name = min((min(shape), n) for n, shape in matrices.items())
    return side, f"the smallest {kind} matrix ({name}) has {side} rows or columns"


def check_fits_model(spec: StudySpec) -> Architecture | None:
    """Raise SpecError listing every field the model cannot take; else the architecture it read
    (None when the config was out of reach), for a caller that needs the model's shape too."""
    from rankstudy.study.plan import sequence_tokens

    source = model_source(spec)
    if spec.model.config is None and not config_within_reach(spec.model.name):
        # a hub id this machine cannot reach (offline) and has not cached: the nodes that run
        # the trials may; they load the model themselves, and fail there, clearly, if not
        print(
            f"rankstudy: {source}: its config is not within reach here (hub offline, not "
            f"cached); the checks against the model are left to the trials",
            flush=True,
        )
        return None
    try:
        arch = read_architecture(spec.model)
    except (OSError, ValueError) as e:  # the reader's own words on an unreadable config
        raise SpecError(f"{source}: cannot read the model's config: {e}") from None
    problems = []
    try:
        adapted = arch.adapted(spec.adapters.target_modules)
    except InputError as e:
        raise SpecError(f"adapters.{e}") from None
    side, where = smallest(adapted, "adapted")
    if spec.adapters.max_rank > side:
        problems.append(
            f"adapters.max_rank: {spec.adapters.max_rank} exceeds the rank any adapter can reach "
            f"on {source}: {where}"
        )
    if spec.task.kind == "planted":
        planted_side, planted_where = side, where  # the default teacher: the adapted matrices
        if spec.task.teacher_targets is not None:
            try:
                teacher = arch.adapted(spec.task.teacher_targets)
            except InputError as e:
                raise SpecError(
                    f"task.teacher_targets: {str(e).removeprefix('target_modules: ')}"
                ) from None
            planted_side, planted_where = smallest(teacher, "teacher")
        if spec.task.planted_rank > planted_side:
            problems.append(
                f"task.planted_rank: {spec.task.planted_rank} cannot be planted in {source}: "
                f"{planted_where}"
            )
    limit = arch.positions
    tokens = sequence_tokens(spec)
    if limit is not None and tokens > limit:
        field = "task.seq_len" if spec.task.kind == "planted" else "task.max_length"
        own = " (model.tiny.max_positions)" if spec.model.tiny else ""
        problems.append(f"{field}: {tokens} tokens exceed the {limit} positions of {source}{own}")
    if problems:
        raise SpecError("\n".join(problems))
    return arch
