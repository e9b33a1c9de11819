"""A study's chosen trial, exported at any rank it serves as a standard PEFT LoRA adapter:
what a user deploys after a study (`rankstudy export`).

The trial is the one the study chose for the method (on validation) and tested, at a seed of
the study; its final adapters are truncated to rank k with the method's inference rule folded
in, or served by SVD under an svd rule (rankstudy.adapters.export_peft), so
`PeftModel.from_pretrained(base, out)` reproduces the study's own model at rank k. Every
request is checked before the base model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rankstudy.core.arms import GRID_ARM, GRID_METHOD, grid_arm, method_arms, method_rule, parse_arm
from rankstudy.core.errors import InputError
from rankstudy.core.methods import SVD_RULES
from rankstudy.core.spec import StudySpec, parse_spec
from rankstudy.storage.folders import TrialStorage
from rankstudy.study.state import STATE_FILE, StudyError, StudyState, read_state
from rankstudy.trial.checkpoint import latest_tag


class ExportError(InputError):
    """A request the study cannot serve; the message names the option and why."""


@dataclass(frozen=True)
class Export:
    arm: str
    rule: str
    rank: int
    trial_dir: str  # the chosen trial's folder, as the study names it


def study_spec(state: StudyState) -> StudySpec:
    if state.spec is None:
        raise ExportError(
            "--study: this study's state does not record its spec (made by an "
            "older rankstudy); run the study again to export from it"
        )
    return parse_spec(state.spec.raw, state.spec.overrides)


def plan_exports(
    state: StudyState, spec: StudySpec, method: str, ranks: list[int] | None, seed: int | None
) -> list[Export]:
    """What to export for `method` (a method of the study, or one of its LoRA arms such as
    lora_r4) at `ranks` (None: every rank it serves), from the trial chosen at `seed`."""
    seeds = spec.seeds or [spec.seed]
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise ExportError(f"--seed: the study ran seeds {seeds}, not {seed}")
    S = spec.adapters.rank_set
    default = None  # every rank served
    if method == GRID_METHOD and method in spec.methods:
        served = {r: grid_arm(r) for r in S}
        what = f"the LoRA grid has one run per rank in {S}"
    elif m := GRID_ARM.fullmatch(method):
        own = int(m.group(1))
        if own not in S or GRID_METHOD not in spec.methods:
            raise ExportError(f"--method: the study trained no LoRA arm {method}")
        served = {k: method for k in parse_arm(method, spec).eval_ranks}
        what = f"{method} was trained at rank {own}: it serves ranks up to {own}"
    elif method in spec.methods and method_rule(method) in SVD_RULES:
        arm = parse_arm(method_arms(method, spec)[0], spec)
        served = {k: arm.name for k in range(1, arm.max_rank + 1)}
        default = arm.ranks_for(method_rule(method))  # what the study scored
        what = f"{method} serves its rank-{arm.max_rank} update by SVD at ranks 1..{arm.max_rank}"
    elif method in spec.methods:
        arm = parse_arm(method_arms(method, spec)[0], spec)
        if arm.kind.grid:  # lora_truncated: the rank-R arm, one run at every rank
            served = {k: arm.name for k in arm.ranks_for(method_rule(method))}
            what = f"{method} serves its rank-{arm.max_rank} run at ranks {sorted(served)}"
        else:
            served = {k: arm.name for k in sorted({*arm.train_ranks, *arm.eval_ranks})}
            what = f"{method} was trained for ranks S = {list(arm.train_ranks)}"
    else:
        raise ExportError(
            f"--method: the study ran no method {method!r}; it ran {', '.join(spec.methods)} "
            f"(or name a LoRA arm, lora_r<rank>)"
        )
    rule = "scaled" if method.startswith("lora_r") else method_rule(method)
    wanted = sorted(default or served) if ranks is None else ranks
    bad = [k for k in wanted if k not in served]
    if bad:
        raise ExportError(f"--rank: {bad[0]} is not a rank {method} serves: {what}")
    tests = state.tests.values()
    out = []
    for k in wanted:
        arm = served[k]
        found = [t for t in tests if t.arm == arm and rule in t.rules and t.seed == seed]
        if not found or found[0].status != "ok":
            why = found[0].failure if found else "the study has not tested it (yet)"
            raise ExportError(f"--method: no chosen trial of {arm} at seed {seed}: {why}")
        out.append(Export(arm, rule, k, found[0].out_dir))
    return out


def read_study(study_dir: Path) -> StudyState:
    """The state of the study in `study_dir` (its --study), or an ExportError saying why not."""
    if not (study_dir / STATE_FILE).is_file():
        raise ExportError(f"--study: {study_dir} holds no study (no {STATE_FILE})")
    try:
        return read_state(study_dir / STATE_FILE, "--study")
    except StudyError as e:
        raise ExportError(str(e)) from None


def run_export(
    study_dir: str | Path,
    method: str,
    ranks: list[int] | None,
    out: str | Path,
    seed: int | None = None,
) -> list[Path]:
    """Write each requested rank as a PEFT adapter: into `out` for one rank, `out/rank<k>`
    for several. Returns the folders written."""
    import torch

    from rankstudy.adapters import export_peft, load_adapters
    from rankstudy.model.build import load_model

    study_dir = Path(study_dir).resolve()
    state = read_study(study_dir)
    spec = study_spec(state)
    exports = plan_exports(state, spec, method, ranks, seed)
    storage = TrialStorage(state.storage, study_dir)
    written, loaded = [], {}
    for e in exports:
        if e.trial_dir not in loaded:  # the base with this trial's adapters, once a trial
            trial_dir = storage.local(e.trial_dir)
            storage.pull_latest_checkpoint(trial_dir)
            tag = latest_tag(trial_dir / "checkpoints")
            if tag is None:
                raise ExportError(f"--study: the chosen trial {trial_dir} has no checkpoint")
            model = load_model(spec.model, torch.float32).model
            load_adapters(model, trial_dir / "checkpoints" / tag / "adapters.safetensors")
            loaded = {e.trial_dir: model}
        model = loaded[e.trial_dir]
        target = Path(out) if len(exports) == 1 else Path(out) / f"rank{e.rank}"
        written.append(export_peft(model, e.rank, target, e.rule))
    return written
