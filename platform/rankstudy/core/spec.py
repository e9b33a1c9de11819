"""The study spec: one YAML file, validated completely before any compute starts.

Every field a trial reads lives here; unknown keys are errors, and every error names the field
(pydantic's location, e.g. `training.lr`) and what was wrong.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rankstudy.core.errors import InputError
from rankstudy.core.gguf_files import check, resolve
from rankstudy.core.methods import DEFAULT as DEFAULT_METHODS
from rankstudy.core.methods import INFERENCE_RULES, SERVED
from rankstudy.core.ranks import powers_of_two

BYTE_VOCAB_SIZE = 258  # rankstudy.model.tokenizer's ids: 256 bytes and 2 specials
SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "file://")


def check_storage_uri(uri: str | None) -> str | None:
    """A storage URI or absolute path (or None), else an InputError saying what was wrong."""
    if uri is not None and not uri.startswith((*SCHEMES, "/")):
        raise InputError(
            f"{uri!r} is neither a storage URI ({', '.join(SCHEMES)}) nor an absolute path"
        )
    return uri


class Strict(BaseModel):
    # inf and nan are never a setting: a learning rate of inf trains to NaN, silently
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TinyModelSpec(Strict):
    """A randomly initialised model built from a config: CPU studies, nothing downloaded."""

    family: Literal["llama", "qwen2", "gpt2"] = "llama"
    hidden: int = Field(64, gt=0)
    layers: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    intermediate: int = Field(128, gt=0)
    vocab: int = Field(256, gt=1)
    initializer_range: float = Field(0.1, gt=0)
    max_positions: int = Field(512, gt=1)
    seed: int = 0

    @field_validator("heads")
    @classmethod
    def _heads_split_hidden(cls, heads: int, info: ValidationInfo) -> int:
        """What the model's attention needs, said before transformers raises it mid-build."""
        hidden, family = info.data.get("hidden"), info.data.get("family")
        if hidden is None:
            return heads  # hidden itself was invalid, and says so
        if hidden % heads:
            raise ValueError(f"{heads} heads do not divide hidden ({hidden}) evenly")
        if family != "gpt2":  # llama and qwen2: rotary positions, grouped key/value heads
            if (hidden // heads) % 2:
                raise ValueError(
                    f"rotary positions need an even head size; hidden {hidden} / {heads} heads "
                    f"= {hidden // heads}"
                )
            if heads % max(1, heads // 2):
                raise ValueError(
                    f"{heads} heads cannot share {heads // 2} key/value heads (heads // 2) "
                    f"evenly; use 1, 3 or an even number"
                )
        return heads


class ModelSpec(Strict):
    """Exactly one of `name` (a Hugging Face id or local path), `gguf` (a GGUF file: a path, or
    `package/file.gguf` inside an installed Python package) and `tiny`."""

    name: str | None = None
    gguf: str | None = None
    tiny: TinyModelSpec | None = None
    config: str | None = Field(
        None,
        description="with `name`: a local config.json (or a folder holding one) of that "
        "model's architecture, which `rankstudy plan` and the checks before a study read "
        "instead of asking the hub (a spec for a cluster plans offline); the trials load "
        "`name` itself",
    )
    trust_remote_code: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if sum(x is not None for x in (self.name, self.gguf, self.tiny)) != 1:
            raise ValueError(
                "give exactly one of `name` (hub id or local path), `gguf` (a GGUF file) and `tiny`"
            )
        if self.config is not None and self.name is None:
            raise ValueError("config: describes the architecture of a `name`; give `name` too")
        return self

    @field_validator("config")
    @classmethod
    def _config_file(cls, config: str | None) -> str | None:
        if config is not None:
            path = Path(config).expanduser()
            if not (path / "config.json" if path.is_dir() else path).is_file():
                raise ValueError(f"{config} is not a config.json, nor a folder holding one")
        return config

    @field_validator("name")
    @classmethod
    def _folder_or_hub_id(cls, name: str | None) -> str | None:
        """A local folder that is there, or a well-formed hub id (the hub itself is asked
        later, where it can be reached: rankstudy.study.model_fit)."""
        if name is None or Path(name).expanduser().is_dir():
            return name
        if name.startswith(("/", "./", "../", "~")) or Path(name).exists():
            raise ValueError(f"{name} is not a folder (a local model is a folder with its config)")
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(name)
        except HFValidationError:
            raise ValueError(
                f"{name!r} is neither a local folder nor a hub id (a name like "
                f"'HuggingFaceTB/SmolLM2-135M-Instruct': letters, digits, '-', '_', '.', at most "
                f"one '/')"
            ) from None
        return name

    @field_validator("gguf")
    @classmethod
    def _gguf_readable(cls, ref: str | None) -> str | None:
        if ref is not None:  # found and checked here, before any compute
            try:
                check(resolve(ref))
            except ValueError as e:  # pydantic puts the field's name in front
                raise ValueError(str(e).removeprefix("model.gguf: ")) from None
        return ref


class PlantedTaskSpec(Strict):
    kind: Literal["planted"] = "planted"
    shift: float = Field(0.5, gt=0, lt=1, description="share of base top-1 predictions moved")
    planted_rank: int = Field(32, gt=0)
    decay: float = Field(1.0, ge=0, description="singular values ~ 1 / i**decay")
    seq_len: int = Field(32, gt=1)
    train_size: int = Field(4096, gt=0)
    validation_size: int = Field(512, gt=0)
    test_size: int = Field(512, gt=0)
    teacher_targets: list[str] | None = Field(
        None,
        min_length=1,
        description="modules the deltas are planted in, matched as adapters.target_modules; "
        "default: the adapters' target modules",
    )


def _is_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or path.endswith(".jsonl") or Path(path).exists()


def _check_file(path: str | None) -> str | None:
    if path is not None and not Path(path).expanduser().exists():
        raise ValueError(f"no such file or directory: {path}")
    return path


class TextTaskSpec(Strict):
    """What every prompt/response task shares: its metrics and how prompts are rendered."""

    metric: Literal["exact_match", "token_accuracy"] = Field(
        "exact_match", description="selection and AURAC use it"
    )
    extra_metrics: list[Literal["exact_match", "token_accuracy", "token_nll"]] = Field(
        [], description="scored beside `metric` at every rank, recorded and reported"
    )
    chat_template: bool = Field(False, description="render prompts with the model's template")
    max_new_tokens: int = Field(128, gt=0)
    max_length: int = Field(1024, gt=8)
    validation_size: int = Field(200, gt=0)
    max_train: int | None = Field(None, gt=0)
    max_eval: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _distinct_metrics(self) -> TextTaskSpec:
        if self.metric in self.extra_metrics or len(set(self.extra_metrics)) < len(
            self.extra_metrics
        ):
            raise ValueError(
                f"extra_metrics: give each metric once, and not the primary `metric` "
                f"({self.metric}); got {self.extra_metrics}"
            )
        return self


class GSM8KTaskSpec(TextTaskSpec):
    kind: Literal["gsm8k"]
    path: str = Field("openai/gsm8k", description="hub id, or a local dir/jsonl")

    @field_validator("path")
    @classmethod
    def _local_path_exists(cls, path: str) -> str:
        return _check_file(path) if _is_local(path) else path

    shots: int = Field(0, ge=0)
    max_new_tokens: int = Field(256, gt=0)
    test_size: int | None = Field(None, gt=0, description="carved from a single jsonl `path`")
    strip_annotations: bool = Field(False, description="drop calculator notes <<a*b=c>>")
    answer_match: Literal["last_number", "strict", "flexible"] = Field(
        "last_number",
        description="exact_match's judge: the final number, lenient; or lm-eval gsm8k's "
        "strict-match (needs '#### N') or flexible-extract, exactly",
    )
    fewshot_sampler: Literal["first_n", "random"] = Field(
        "first_n",
        description="exemplars: the first `shots` train problems, or lm-eval's default "
        "sampler (Random(1234), a fresh draw per evaluated problem)",
    )


class JsonlTaskSpec(TextTaskSpec):
    kind: Literal["jsonl"]
    train: str
    validation: str | None = None
    test: str | None = None
    _files_exist = field_validator("train", "validation", "test")(lambda cls, v: _check_file(v))
    prompt_field: str = "prompt"
    response_field: str = "response"


TaskSpec = Annotated[PlantedTaskSpec | GSM8KTaskSpec | JsonlTaskSpec, Field(discriminator="kind")]


class AdapterSpec(Strict):
    max_rank: int = Field(32, gt=0)
    train_ranks: list[int] | None = Field(None, description="S; default powers of two <= R")
    eval_ranks: list[int] | None = Field(None, description="default: train_ranks")
    target_modules: list[str] | str = ["q_proj", "v_proj"]
    scaling: Literal["none", "rank", "sqrt"] = "sqrt"
    alpha: float = Field(1.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    inference_rules: list[Literal[INFERENCE_RULES]] = ["scaled"]  # type: ignore[valid-type]
    a_init: Literal["peft", "reference"] = "peft"
    lora_truncations: bool = Field(False, description="also score LoRA arms below their rank")
    rank_draw: Literal["step", "micro_batch"] = Field(
        "step",
        description="how often a drawing method (dylora, dylora_frozen, nested_sampled) draws "
        "its rank b: once per optimizer step, or once per micro-batch (the reference code's "
        "draw per forward: grad_accum draws a step); every worker draws the same b",
    )

    @model_validator(mode="after")
    def _ranks(self) -> AdapterSpec:
        for name in ("train_ranks", "eval_ranks"):
            ranks = getattr(self, name)
            if ranks is None:
                continue
            if not ranks:
                raise ValueError(f"{name}: empty")
            if ranks != sorted(set(ranks)):
                raise ValueError(f"{name}: must be strictly increasing, got {ranks}")
            if ranks[0] <= 0 or ranks[-1] > self.max_rank:
                raise ValueError(
                    f"{name}: ranks must lie in 1..max_rank={self.max_rank}, got {ranks}"
                )
        if not self.inference_rules or len(set(self.inference_rules)) != len(self.inference_rules):
            raise ValueError("inference_rules: give each rule once, at least one")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules: empty")
        return self

    @property
    def rank_set(self) -> list[int]:
        return self.train_ranks or list(powers_of_two(self.max_rank))

    @property
    def evaluation_ranks(self) -> list[int]:
        return self.eval_ranks or self.rank_set


class TrainingSpec(Strict):
    """The budget, identical for every arm: steps or epochs, never both."""

    steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    micro_batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, ge=0, description="0 turns clipping off")
    eval_every: int = Field(0, ge=0, description="validation every N steps; 0: only at the end")
    eval_batch_size: int = Field(64, gt=0)
    checkpoint_every: int = Field(0, ge=0, description="0: only at the end")
    log_every: int = Field(25, gt=0)

    @model_validator(mode="after")
    def _budget(self) -> TrainingSpec:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of `steps` and `epochs`")
        return self


class DeepSpeedSpec(Strict):
    zero_stage: int = Field(2, ge=0, le=3)
    precision: Literal["auto", "bf16", "bf16_pure", "fp32"] = Field(
        "auto",
        description="auto: bf16 on GPUs that compute in it, else fp32; bf16: bf16 parameters "
        "and gradients with DeepSpeed's fp32 master weights and fp32 AdamW state; bf16_pure: "
        "parameters, gradients and AdamW state all in bf16, no fp32 copy (the reference "
        "code's HF Trainer on a model loaded in bf16), on CPUs too; needs ZeRO stage 1-3 "
        "and no optimizer offload",
    )
    offload_optimizer: bool = False

    @model_validator(mode="after")
    def _pure_bf16_in_zero(self) -> DeepSpeedSpec:
        """DeepSpeed keeps bf16 master weights and bf16 optimizer state only in its ZeRO
        optimizers (bf16_master_weights_and_grads, bf16_optimizer_states), and with optimizer
        offload only in its compiled CPU Adam, which trials do not use (torch's AdamW)."""
        if self.precision != "bf16_pure":
            return self
        if self.zero_stage == 0:
            raise ValueError(
                "precision: bf16_pure needs zero_stage 1, 2 or 3 (DeepSpeed keeps bf16 master "
                "weights and optimizer state only in its ZeRO optimizers); got zero_stage 0"
            )
        if self.offload_optimizer:
            raise ValueError(
                "precision: bf16_pure does not work with offload_optimizer: true (DeepSpeed "
                "keeps offloaded bf16 optimizer state only in its compiled CPU Adam); use "
                "bf16, or offload_optimizer: false"
            )
        return self


class ResourcesSpec(Strict):
    workers: int = Field(1, gt=0, description="Ray Train workers (processes) per trial")
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, gt=0)
    wait_timeout_s: float = Field(
        1800, gt=0, description="give up when trials waited this long for resources, none running"
    )

    @property
    def worker(self) -> dict[str, float]:
        """What each Ray Train worker (a trial's only process, when it has one) holds."""
        return {"CPU": self.cpus_per_worker, **({"GPU": 1} if self.use_gpu else {})}


# What a study can serve: every method of the registry under each of its served names
# (the LoRA grid, each nested method, Matryoshka under each inference rule).
METHODS = tuple(SERVED)


class ParamRange(Strict):
    """A hyperparameter's search range: a float interval (log or linear) or choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float | int | str | bool] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParamRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either non-empty `choices` or `low` and `high`")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give `low` and `high` (or `choices`)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class SchedulerSpec(Strict):
    """Ray Tune's ASHA (asynchronous successive halving) over each arm's search trials: a
    trial is compared with its own arm's at rungs grace_period x reduction_factor^k optimizer
    steps (at the first validation at or past each), and stopped there unless its validation
    selection metric is in the arm's top 1/reduction_factor so far."""

    kind: Literal["asha"]
    grace_period: int = Field(gt=0, description="optimizer steps before a trial can be stopped")
    reduction_factor: float = Field(3, gt=1, description="keep the top 1/reduction_factor")


class SearchSpec(Strict):
    """The same Optuna search for every arm: trials_per_arm trials over `space`, whose keys
    are spec fields in dotted form (training.lr, training.weight_decay, adapters.dropout);
    `scheduler` stops weak trials early (None: every trial runs its whole budget)."""

    trials_per_arm: int = Field(2, gt=0)
    space: dict[str, ParamRange] = {"training.lr": ParamRange(low=1e-3, high=1e-2, log=True)}
    seed: int = 0
    scheduler: SchedulerSpec | None = None


class TrackingSpec(Strict):
    """MLflow. uri: None means $MLFLOW_TRACKING_URI, else a sqlite file in the study's
    output directory; experiment: None means the study's name."""

    uri: str | None = None
    experiment: str | None = None
    register_as: str | None = Field(
        None,
        description="at the end of the study, export the recommended method at its rank and "
        "register it as a version of this MLflow model (rankstudy.study.registry); off by default",
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        schemes = (
            "sqlite:///",
            "http://",
            "https://",
            "file:",
            "postgresql",
            "mysql",
            "databricks",
        )
        if uri is not None and not uri.startswith(schemes):
            raise ValueError(
                f"{uri!r} is not an MLflow tracking URI (expected one of {', '.join(schemes)}...)"
            )
        return uri


class ThroughputSpec(Strict):
    """A measured training throughput, for `rankstudy plan`: tokens a second that one device
    trains the max-rank LoRA arm at. Other arms scale by their FLOPs."""

    device: str = Field(min_length=1, description="the device type it was measured on")
    tokens_per_second: float = Field(gt=0)


class VerdictSpec(Strict):
    """How a study says which differences are real (rankstudy.core.intervals): a paired bootstrap
    over test examples, and what counts as a tie for the deploy recommendation."""

    tolerance: float = Field(
        0.01, ge=0, description="scores this close to the best count as tied with it"
    )
    resamples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(0, description="the bootstrap's seed: the intervals are reproducible")


class StudySpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelSpec
    task: TaskSpec = PlantedTaskSpec()
    adapters: AdapterSpec = AdapterSpec()
    training: TrainingSpec
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    resources: ResourcesSpec = ResourcesSpec()
    seed: int = 0
    methods: list[Literal[METHODS]] = list(DEFAULT_METHODS)  # type: ignore[valid-type]
    seeds: list[int] | None = Field(None, description="repeat every arm; default [seed]")
    search: SearchSpec = SearchSpec()
    tracking: TrackingSpec = TrackingSpec()
    verdict: VerdictSpec = VerdictSpec()
    # Where trial results and checkpoints live for every node (rankstudy.storage.folders): an S3/GCS
    # URI or a shared path; None means the study's output folder, which every node must see.
    storage: str | None = None
    price_per_device_hour: float | None = Field(None, ge=0)
    _storage_scheme = field_validator("storage")(lambda cls, v: check_storage_uri(v))
    throughput: ThroughputSpec | None = None
    sweep: dict[str, list[float | int | str | bool]] | None = Field(
        None, description="run the whole study once per value of a spec field"
    )
    budgets: list[float] | None = Field(
        None,
        description="run the whole study once per multiple of the training budget "
        "(training.steps or training.epochs), crossed with any `sweep`",
    )

    @model_validator(mode="after")
    def _flash_attention_needs_gpus(self) -> StudySpec:
        if self.model.attn_implementation == "flash_attention_2" and not self.resources.use_gpu:
            raise ValueError(
                "model.attn_implementation: flash_attention_2 runs on CUDA GPUs only, and this "
                "spec's trials run on CPUs (resources.use_gpu: false); use sdpa, or set "
                "resources.use_gpu: true"
            )
        return self

    @model_validator(mode="after")
    def _study(self) -> StudySpec:
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: give each method once, at least one")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds: give each seed once, at least one")
        probes = [  # every choice (a scaling searched per arm), or a range's two ends
            (f"search.space.{k}", k, v)
            for k, r in self.search.space.items()
            for v in (r.choices if r.choices is not None else (r.low, r.high))
        ]
        for key, values in (self.sweep or {}).items():
            if not values:
                raise ValueError(f"sweep.{key}: give at least one value")
            probes += [(f"sweep.{key}", key, v) for v in values]
        for where, key, probe in probes:
            data = self.model_dump(exclude={"search", "sweep", "budgets"}) | {
                "search": {"space": {}}
            }
            try:
                set_key(data, key, probe)
                StudySpec.model_validate(data)
            except ValidationError as e:
                raise ValueError(f"{where}: {_format(e)}") from None
            except SpecError as e:
                raise ValueError(f"{where}: {e}") from None
        return self

    @model_validator(mode="after")
    def _scheduler_sees_validations(self) -> StudySpec:
        """ASHA decides on what a trial reports while it trains: its validations, counted in
        optimizer steps, from the one process Tune runs it in."""
        asha, t = self.search.scheduler, self.training
        if asha is None:
            return self
        if not t.eval_every:
            raise ValueError(
                "search.scheduler: ASHA compares trials at their validations; set "
                "training.eval_every > 0"
            )
        if t.steps is None:
            raise ValueError(
                "search.scheduler: ASHA's rungs are optimizer steps; give the budget as "
                "training.steps, not training.epochs"
            )
        if asha.grace_period >= t.steps:
            raise ValueError(
                f"search.scheduler.grace_period: {asha.grace_period} must be below the budget "
                f"(training.steps: {t.steps}), or no trial could ever be stopped"
            )
        if self.resources.workers > 1:
            raise ValueError(
                f"search.scheduler: ASHA needs each validation reported to Tune while the trial "
                f"trains, and a trial on several Ray Train workers (resources.workers: "
                f"{self.resources.workers}) reports to Ray Train only; use resources.workers: 1"
            )
        return self

    @model_validator(mode="after")
    def _budgets(self) -> StudySpec:
        """Each multiple a distinct point: a budget that rounds to another's steps would run
        the same study twice under two labels."""
        if self.budgets is None:
            return self
        if not self.budgets or any(b <= 0 for b in self.budgets):
            raise ValueError(f"budgets: give at least one multiple, each > 0; got {self.budgets}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets: give each multiple once; got {self.budgets}")
        swept = {"training.steps", "training.epochs"} & set(self.sweep or {})
        if swept:
            raise ValueError(
                f"budgets: multiply the spec's own training budget; do not also sweep "
                f"{', '.join(sorted(swept))}"
            )
        steps = self.training.steps
        if steps is not None:
            by_steps: dict[int, float] = {}
            for b in self.budgets:
                other = by_steps.setdefault(scaled_steps(steps, b), b)
                if other != b:
                    raise ValueError(
                        f"budgets: {other} and {b} both give training.steps="
                        f"{scaled_steps(steps, b)} (of {steps}); drop one"
                    )
        return self

    @model_validator(mode="after")
    def _text_tasks_need_bytes(self) -> StudySpec:
        tiny = self.model.tiny
        if self.task.kind != "planted" and tiny is not None and tiny.vocab < BYTE_VOCAB_SIZE:
            raise ValueError(
                f"model.tiny.vocab: a text task on a tiny model uses the byte "
                f"tokenizer and needs vocab >= {BYTE_VOCAB_SIZE}, got {tiny.vocab}"
            )
        return self


def scaled_steps(steps: int, budget: float) -> int:
    """A budget multiple of `steps`: rounded, at least one step."""
    return max(1, round(steps * budget))


class SpecError(InputError):
    """A spec that failed validation; the message lists every field and problem."""


def _format(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n".join(lines)


def set_key(data: dict, dotted: str, value: object) -> None:
    """Apply one `--set a.b.c=value` override to the raw spec dict."""
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"{dotted}: {p} is not a mapping")
    node[leaf] = value


def parse_spec(data: dict, overrides: list[str] = ()) -> StudySpec:
    """Validate a raw spec dict, after `key=value` overrides (values parsed as YAML)."""
    data = copy.deepcopy(data)  # overrides never touch the caller's dict
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            why = getattr(e, "problem", None) or e  # a parser's problem, without its excerpt
            raise SpecError(f"--set {item!r}: the value is not valid YAML ({why})") from None
        set_key(data, key.strip(), value)
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format(e)) from None


@functools.lru_cache(maxsize=32)
def _parse_canonical(data: str, overrides: tuple[str, ...]) -> StudySpec:
    return parse_spec(json.loads(data), list(overrides))


def parse_spec_once(data: dict, overrides: list[str] = ()) -> StudySpec:
    """parse_spec, once a process for the same data and overrides: a trial actor reads the
    study's spec for every trial it runs (a StudySpec is frozen, so sharing it is safe)."""
    return _parse_canonical(json.dumps(data, sort_keys=True), tuple(overrides))


# Spec fields that name local files: a relative path ("./x", "../x") in a spec file is taken
# relative to that file, so a spec works from any working directory (a Ray job runs in a copy).
PATH_FIELDS = (
    ("model", "name"),
    ("model", "config"),
    ("model", "gguf"),
    ("task", "path"),
    ("task", "train"),
    ("task", "validation"),
    ("task", "test"),
)


def read_spec_file(path: str | Path) -> dict:
    """The raw spec of a YAML file, its relative paths made absolute."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec: no such file {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"spec: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec: {path} must hold a mapping at the top level")
    for section, field in PATH_FIELDS:
        value = (
            (data.get(section) or {}).get(field) if isinstance(data.get(section), dict) else None
        )
        if isinstance(value, str) and value.startswith(("./", "../")):
            data[section][field] = str((path.resolve().parent / value).resolve())
    return data


def load_spec(path: str | Path, overrides: list[str] = ()) -> StudySpec:
    return parse_spec(read_spec_file(path), overrides)
