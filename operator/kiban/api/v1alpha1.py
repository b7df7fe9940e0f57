"""FoundationModel, kiban.dev/v1alpha1: the pydantic models that generate the CRD.

One source for the schema (ARCHITECTURE habit 7): field descriptions become `kubectl explain`
text, defaults become schema defaults, and each `CelRule` is both an
`x-kubernetes-validations` entry (enforced by the API server) and a Python check (so
`kiban crd validate`, the examples' tests and the operator reject the same objects with the
same message).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic.alias_generators import to_camel

GROUP = "kiban.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FoundationModel"
PLURAL = "foundationmodels"
SINGULAR = "foundationmodel"
SHORT_NAMES = ("fm",)

# hf://org/repo, pvc://claim[/path], s3://bucket[/prefix]; shared by the schema and the builders.
HF_URI = r"hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+"
PVC_URI = r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?"
S3_URI = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?"
MODEL_URI_PATTERN = rf"^({HF_URI}|{PVC_URI}|{S3_URI})$"
ADAPTER_URI_PATTERN = rf"^({HF_URI}|{PVC_URI})$"
PARAMETERS_PATTERN = r"^[0-9]+(\.[0-9]+)?[MBT]$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PROFILE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Served model and adapter names travel in OpenAI request bodies; keep them URL- and label-friendly.
SERVED_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

POWERS_OF_TWO = (1, 2, 4, 8, 16)
# Values vLLM 0.33 accepts for --max-lora-rank.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Flags the operator sets itself; extraArgs may not override them (the API key never goes in args).
OPERATOR_OWNED_FLAGS = (
    "--api-key",
    "--host",
    "--port",
    "--served-model-name",
    "--tensor-parallel-size",
    "--pipeline-parallel-size",
    "--model",
)

StrictInt = Annotated[int, Strict()]


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule: CEL for the API server, `check` for Python, one message for both."""

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def as_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _schema_default(value: Any) -> Any:
    """The schema default of a default_factory value: nested objects fully defaulted.

    The API server checks a default against the CEL rules as written, without filling the
    defaults nested inside it, so `{}` would fail rules that read those nested fields.
    """
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


def _schema_extra(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Add CEL rules, and schema defaults for default_factory fields ([] / {}), so CEL may read them."""
    rules: tuple[CelRule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.as_schema() for r in rules]
    for name, field in cls.model_fields.items():
        if field.default_factory is None:
            continue
        key = field.alias or name
        if key in schema.get("properties", {}):
            schema["properties"][key]["default"] = _schema_default(field.default_factory())  # type: ignore[call-arg]


class KibanModel(BaseModel):
    """Base: camelCase JSON names, Python names accepted too, unknown fields rejected, CEL rules checked."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        json_schema_extra=_schema_extra,
    )
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> KibanModel:
        for rule in self.cel_rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self


def _section(model: type[BaseModel], description: str) -> Any:
    """A nested object that defaults to `{}` in the schema, so the API server fills its defaults."""
    return Field(default_factory=model, description=description)


# --------------------------------------------------------------------------- spec: model


class Dtype(StrEnum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Quantization(StrEnum):
    none = "none"
    fp8 = "fp8"
    awq = "awq"
    gptq = "gptq"
    bitsandbytes = "bitsandbytes"


class SecretRef(KibanModel):
    """Reference to a Secret in the FoundationModel's namespace."""

    name: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="Name of the Secret in the same namespace.",
    )


class SecretKeyRef(SecretRef):
    """Reference to one key of a Secret in the FoundationModel's namespace."""

    key: str = Field(
        default="api-key",
        pattern=r"^[-._a-zA-Z0-9]+$",
        max_length=253,
        description="Key inside the Secret whose value is used.",
    )


def parameter_count(parameters: str) -> float:
    """Number of parameters from the short form used in the spec: '8B' -> 8e9, '500M' -> 5e8."""
    if not re.fullmatch(PARAMETERS_PATTERN, parameters):
        raise ValueError(f"spec.model.parameters: {parameters!r} is not like '8B', '1.5B' or '500M'")
    scale = {"M": 1e6, "B": 1e9, "T": 1e12}[parameters[-1]]
    return float(parameters[:-1]) * scale


class ModelSource(KibanModel):
    """Which model to serve, where its weights come from and how they are loaded."""

    uri: str = Field(
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
        description=(
            "Where the weights come from. hf://ORG/REPO downloads from the Hugging Face Hub into the "
            "model cache; pvc://CLAIM/PATH mounts that PersistentVolumeClaim read-only and serves the "
            "directory PATH; s3://BUCKET/PREFIX streams the weights with vLLM's Run:ai model streamer "
            "(--load-format runai_streamer), with credentials from credentialsSecretRef."
        ),
    )
    parameters: str | None = Field(
        default=None,
        pattern=PARAMETERS_PATTERN,
        max_length=16,
        description=(
            "Model size as a parameter count, e.g. 8B, 70B, 1.5B, 500M. With "
            "accelerator.tensorParallelSize auto, the operator picks the GPU count per replica "
            "from it; without it, one GPU per replica is assumed."
        ),
    )
    revision: str | None = Field(
        default=None,
        max_length=255,
        description="Hub revision (branch, tag or commit) for hf:// models; passed as --revision.",
    )
    served_model_name: str | None = Field(
        default=None,
        pattern=SERVED_NAME_PATTERN,
        max_length=128,
        description="Name clients put in the OpenAI 'model' field. Defaults to metadata.name.",
    )
    dtype: Dtype = Field(
        default=Dtype.auto,
        description="Weight and activation dtype (--dtype). auto uses the model's own (usually bfloat16).",
    )
    quantization: Quantization = Field(
        default=Quantization.none,
        description=(
            "Weight quantization method (--quantization). none serves the checkpoint as is; fp8 "
            "needs 1 byte per parameter, awq/gptq/bitsandbytes (4-bit) half a byte."
        ),
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=10_485_760,
        description="Longest prompt plus output in tokens (--max-model-len). Defaults to the model's own limit.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository's own Python code to run (--trust-remote-code).",
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description=(
            "Secret whose keys become environment variables of the engine: HF_TOKEN for gated "
            "Hugging Face repositories, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL "
            "for s3:// models."
        ),
    )

    @property
    def scheme(self) -> Literal["hf", "pvc", "s3"]:
        return self.uri.split("://", 1)[0]  # type: ignore[return-value]

    @property
    def parameter_count(self) -> float | None:
        return parameter_count(self.parameters) if self.parameters else None

    cel_rules = (
        CelRule(
            rule="!has(self.revision) || self.uri.startsWith('hf://')",
            message="spec.model.revision applies only to hf:// models",
            check=lambda m: m.revision is None or m.uri.startswith("hf://"),
            field_path=".revision",
        ),
    )


# --------------------------------------------------------------------------- spec: engine


class SecretKeySelector(KibanModel):
    """Selects a key of a Secret or ConfigMap."""

    name: str = Field(max_length=253, description="Name of the Secret or ConfigMap.")
    key: str = Field(max_length=253, description="Key to read.")
    optional: bool | None = Field(default=None, description="Whether a missing object or key is allowed.")


class EnvVarSource(KibanModel):
    """Where an environment variable's value comes from."""

    secret_key_ref: SecretKeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: SecretKeySelector | None = Field(default=None, description="A key of a ConfigMap.")

    cel_rules = (
        CelRule(
            rule="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="valueFrom needs exactly one of secretKeyRef or configMapKeyRef",
            check=lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
        ),
    )


class EnvVar(KibanModel):
    """An environment variable for the engine container."""

    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=256, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(default=None, description="Value read from a Secret or ConfigMap.")

    cel_rules = (
        CelRule(
            rule="!(has(self.value) && has(self.valueFrom))",
            message="env: set value or valueFrom, not both",
            check=lambda e: not (e.value is not None and e.value_from is not None),
        ),
    )


class ResourceRequirements(KibanModel):
    """CPU and memory for the engine container; the GPU resource is set by the operator."""

    requests: dict[str, Annotated[str, Field(pattern=QUANTITY_PATTERN)]] = Field(
        default_factory=dict,
        description="Minimum resources, e.g. {cpu: '8', memory: 64Gi}.",
        json_schema_extra={"maxProperties": 16},
    )
    limits: dict[str, Annotated[str, Field(pattern=QUANTITY_PATTERN)]] = Field(
        default_factory=dict,
        description="Maximum resources, e.g. {memory: 96Gi}. GPU limits are set from the accelerator profile.",
        json_schema_extra={"maxProperties": 16},
    )


class EngineSpec(KibanModel):
    """The vLLM engine: image, batch limits, memory use and any extra flags."""

    image: str | None = Field(
        default=None,
        max_length=512,
        description=(
            "vLLM OpenAI server image. Defaults to the operator's configured image "
            "(KIBAN_VLLM_IMAGE, itself defaulting to the pinned vllm/vllm-openai:v0.33.0), so a "
            "disconnected cluster can point every model at a mirror."
        ),
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Most sequences in one batch (--max-num-seqs). Defaults to vLLM's own choice.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of each GPU's memory vLLM may use (--gpu-memory-utilization); also used for sizing.",
    )
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Further `vllm serve` arguments, appended as given. An unknown flag makes vLLM exit at "
            "start; flags the operator owns (--api-key, --host, --port, --served-model-name, "
            "--tensor-parallel-size, --pipeline-parallel-size, --model) are rejected."
        ),
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment variables for the engine container.",
    )
    resources: ResourceRequirements = _section(
        ResourceRequirements, "CPU and memory requests and limits for the engine container."
    )

    cel_rules = (
        CelRule(
            rule=(
                "self.extraArgs.all(a, !["
                + ", ".join(f"'{f}'" for f in OPERATOR_OWNED_FLAGS)
                + "].exists(f, a == f || a.startsWith(f + '=')))"
            ),
            message=(
                "spec.engine.extraArgs may not set flags the operator owns: " + ", ".join(OPERATOR_OWNED_FLAGS)
            ),
            check=lambda e: not any(
                a == f or a.startswith(f + "=") for a in e.extra_args for f in OPERATOR_OWNED_FLAGS
            ),
            field_path=".extraArgs",
        ),
        CelRule(
            rule="self.env.all(e, self.env.exists_one(o, o.name == e.name))",
            message="spec.engine.env names must be unique",
            check=lambda e: len({v.name for v in e.env}) == len(e.env),
            field_path=".env",
        ),
    )


# --------------------------------------------------------------------------- spec: accelerator


GpuCount = Literal["auto"] | StrictInt


def _is_auto_or_power_of_two(value: GpuCount) -> bool:
    return value == "auto" or (isinstance(value, int) and value in POWERS_OF_TWO)


def _power_of_two_rule(field: str) -> CelRule:
    powers = ", ".join(str(p) for p in POWERS_OF_TWO)
    python_name = {"gpusPerReplica": "gpus_per_replica", "tensorParallelSize": "tensor_parallel_size"}[field]
    return CelRule(
        rule=f"type(self.{field}) == string ? self.{field} == 'auto' : self.{field} in [{powers}]",
        message=f"spec.accelerator.{field} must be 'auto' or a power of two from 1 to {POWERS_OF_TWO[-1]}",
        check=lambda a: _is_auto_or_power_of_two(getattr(a, python_name)),
        field_path=f".{field}",
    )


class AcceleratorSpec(KibanModel):
    """Which accelerator serves the model and how many per replica."""

    profile: str = Field(
        pattern=PROFILE_NAME_PATTERN,
        max_length=63,
        description=(
            "Accelerator profile from the operator's configuration (node selector, GPU resource name, "
            "GPU memory), e.g. nvidia-l4, nvidia-h100-80gb, nvidia-a100-80gb, nvidia-mig-1g.10gb."
        ),
    )
    gpus_per_replica: GpuCount = Field(
        default="auto",
        description=(
            "GPUs per replica, 'auto' or a power of two. auto: tensorParallelSize when that is a "
            "number, else the smallest power of two whose memory holds the weights plus a KV-cache "
            "reserve. More GPUs than tensorParallelSize adds pipeline parallelism."
        ),
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    tensor_parallel_size: GpuCount = Field(
        default="auto",
        description=(
            "Tensor-parallel degree (--tensor-parallel-size), 'auto' or a power of two. auto: equal to "
            "gpusPerReplica, or sized from spec.model.parameters when both are auto."
        ),
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )

    cel_rules = (
        _power_of_two_rule("gpusPerReplica"),
        _power_of_two_rule("tensorParallelSize"),
        CelRule(
            rule=(
                "type(self.gpusPerReplica) == string || type(self.tensorParallelSize) == string || "
                "(int(self.gpusPerReplica) >= int(self.tensorParallelSize) && "
                "int(self.gpusPerReplica) % int(self.tensorParallelSize) == 0)"
            ),
            message="spec.accelerator.gpusPerReplica must be a multiple of tensorParallelSize",
            check=lambda a: not (isinstance(a.gpus_per_replica, int) and isinstance(a.tensor_parallel_size, int))
            or (a.gpus_per_replica >= a.tensor_parallel_size and a.gpus_per_replica % a.tensor_parallel_size == 0),
            field_path=".gpusPerReplica",
        ),
    )


# --------------------------------------------------------------------------- spec: scaling


class SloSpec(KibanModel):
    """Latency objectives the autoscaler sizes the model to (milliseconds)."""

    ttft_p95_ms: int | None = Field(
        default=None, ge=1, le=600_000, description="95th-percentile time to first token, milliseconds."
    )
    ttft_p99_ms: int | None = Field(
        default=None, ge=1, le=600_000, description="99th-percentile time to first token, milliseconds."
    )
    itl_p95_ms: int | None = Field(
        default=None, ge=1, le=60_000, description="95th-percentile inter-token latency, milliseconds."
    )

    cel_rules = (
        CelRule(
            rule="has(self.ttftP95Ms) || has(self.ttftP99Ms) || has(self.itlP95Ms)",
            message="spec.scaling.slo needs at least one of ttftP95Ms, ttftP99Ms, itlP95Ms",
            check=lambda s: any(v is not None for v in (s.ttft_p95_ms, s.ttft_p99_ms, s.itl_p95_ms)),
        ),
        CelRule(
            rule="!has(self.ttftP95Ms) || !has(self.ttftP99Ms) || self.ttftP95Ms <= self.ttftP99Ms",
            message="spec.scaling.slo.ttftP95Ms must not exceed ttftP99Ms",
            check=lambda s: s.ttft_p95_ms is None or s.ttft_p99_ms is None or s.ttft_p95_ms <= s.ttft_p99_ms,
            field_path=".ttftP95Ms",
        ),
    )


class ScalingSpec(KibanModel):
    """Replica bounds, the latency SLO and how the autoscaler may move between them."""

    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest replicas; 0 allows scaling to zero when idle."
    )
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            "Desired replica count; the scale subresource's spec path, so `kubectl scale fm/NAME "
            "--replicas=N` writes it. With autoscaling false it is yours (default minReplicas); with "
            "autoscaling true Kiban's autoscaler writes its decision here, so one number is visible "
            "and nothing else fights over the Deployment's replicas."
        ),
    )
    autoscaling: bool = Field(
        default=True, description="Let Kiban's SLO autoscaler choose replicas between minReplicas and maxReplicas."
    )
    slo: SloSpec | None = Field(default=None, description="Latency objectives; required when autoscaling is true.")
    target_utilization: float = Field(
        default=0.75,
        gt=0.0,
        lt=1.0,
        description="Highest fraction of a replica's predicted capacity to plan for, in (0, 1): headroom for bursts.",
    )
    peak_factor: float = Field(
        default=1.0, ge=1.0, le=100.0, description="Multiplier on the observed arrival rate before sizing (>= 1)."
    )
    gpu_budget: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Most GPUs all replicas together may use; caps replicas at gpuBudget / GPUs per replica.",
    )
    stabilization_window_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="Scale down only to the highest replica count recommended within this many seconds.",
    )
    scale_to_zero_idle_seconds: int | None = Field(
        default=None,
        ge=60,
        le=86_400,
        description="With minReplicas 0: seconds without requests before scaling to zero.",
    )

    cel_rules = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="spec.scaling.minReplicas must be less than or equal to maxReplicas",
            check=lambda s: s.min_replicas <= s.max_replicas,
            field_path=".minReplicas",
        ),
        CelRule(
            rule="!has(self.replicas) || (self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas)",
            message="spec.scaling.replicas must be within minReplicas..maxReplicas",
            check=lambda s: s.replicas is None or s.min_replicas <= s.replicas <= s.max_replicas,
            field_path=".replicas",
        ),
        CelRule(
            rule="!self.autoscaling || has(self.slo)",
            message="spec.scaling.slo is required when spec.scaling.autoscaling is true",
            check=lambda s: not s.autoscaling or s.slo is not None,
            field_path=".slo",
        ),
        CelRule(
            rule="!has(self.scaleToZeroIdleSeconds) || self.minReplicas == 0",
            message="spec.scaling.scaleToZeroIdleSeconds needs minReplicas 0",
            check=lambda s: s.scale_to_zero_idle_seconds is None or s.min_replicas == 0,
            field_path=".scaleToZeroIdleSeconds",
        ),
    )

    def desired_replicas(self) -> int:
        """What the workload runs: `replicas` (the scale subresource: kubectl scale, an HPA, Kiban's
        autoscaler) within minReplicas..maxReplicas, else minReplicas."""
        wanted = self.min_replicas if self.replicas is None else self.replicas
        return max(self.min_replicas, min(self.max_replicas, wanted))


# --------------------------------------------------------------------------- spec: the rest


class CacheVolumeType(StrEnum):
    empty_dir = "emptyDir"
    pvc = "pvc"


class CacheSpec(KibanModel):
    """The writable model cache (HF_HOME, vLLM's compile cache)."""

    type: CacheVolumeType = Field(
        default=CacheVolumeType.empty_dir,
        description="emptyDir: per pod, lost on restart. pvc: one PersistentVolumeClaim NAME-cache shared by the replicas.",
    )
    size: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        max_length=32,
        description="emptyDir size limit or PVC request, e.g. 100Gi. Required for pvc.",
    )
    storage_class_name: str | None = Field(
        default=None, max_length=253, description="StorageClass of the PVC; the cluster default when unset."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        default="ReadWriteMany",
        description="PVC access mode. ReadWriteMany lets replicas on different nodes share one download.",
    )

    cel_rules = (
        CelRule(
            rule="self.type != 'pvc' || has(self.size)",
            message="spec.cache.size is required when spec.cache.type is pvc",
            check=lambda c: c.type != CacheVolumeType.pvc or c.size is not None,
            field_path=".size",
        ),
    )


class Adapter(KibanModel):
    """A LoRA adapter served beside the base model under its own name."""

    name: str = Field(
        pattern=SERVED_NAME_PATTERN,
        max_length=128,
        description="Name clients use in the OpenAI 'model' field to select this adapter.",
    )
    uri: str = Field(
        pattern=ADAPTER_URI_PATTERN,
        max_length=1024,
        description="hf://ORG/REPO (vLLM downloads it) or pvc://CLAIM/PATH (mounted read-only).",
    )
    rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] | None = Field(
        default=None,
        description="The adapter's LoRA rank; --max-lora-rank is set to the largest. vLLM's default (16) when unset.",
    )


class Toleration(KibanModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty matches all keys with Exists.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="For NoExecute: how long the pod stays bound.")


class SchedulingSpec(KibanModel):
    """Pod placement passed through to the engine pods, added to the accelerator profile's own."""

    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        description="Extra node labels to require; a key here overrides the profile's.",
        json_schema_extra={"maxProperties": 32},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Extra tolerations, added to the profile's (nvidia.com/gpu Exists NoSchedule).",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="core/v1 Affinity, passed through unchanged.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the engine pods."
    )


class ExposureSpec(KibanModel):
    """How clients reach the model."""

    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Type of the Service on port 8000."
    )
    route: bool = Field(
        default=False,
        description=(
            "On OpenShift, create a Route (edge TLS) exposing only the /v1 paths, which --api-key guards."
        ),
    )
    route_host: str | None = Field(
        default=None, max_length=253, description="Route host; the router's generated host when unset."
    )
    network_policy: bool = Field(
        default=True,
        description=(
            "Create a NetworkPolicy allowing port 8000 only from this namespace, allowedNamespaceLabels, "
            "the operator's monitoring namespace and (with route) the OpenShift router."
        ),
    )
    allowed_namespace_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        description="Namespaces with all these labels may also reach the model.",
        json_schema_extra={"maxProperties": 16},
    )

    cel_rules = (
        CelRule(
            rule="!has(self.routeHost) || self.route",
            message="spec.exposure.routeHost needs spec.exposure.route true",
            check=lambda e: e.route_host is None or e.route,
            field_path=".routeHost",
        ),
    )


class DriftSpec(KibanModel):
    """Workload drift detection on prompt and output token distributions."""

    enabled: bool = Field(default=False, description="Compare recent token distributions with a reference window.")
    window_seconds: int = Field(
        default=120, ge=30, le=86_400,
        description="Length of each drift window, seconds (the detector's measured default is 120).",
    )
    reference_window_seconds: int = Field(
        default=360, ge=30, le=2_592_000,
        description=(
            "Time the rolling reference covers, seconds: the last round(referenceWindowSeconds / "
            "windowSeconds) windows, at least one (default 360: 3 windows of 120 s, as measured)."
        ),
    )
    js_divergence_threshold: float = Field(
        default=0.1, gt=0.0, le=1.0, description="Jensen-Shannon divergence above which drift is reported."
    )
    p_value_threshold: float = Field(
        default=0.05, gt=0.0, lt=1.0, description="Kolmogorov-Smirnov p-value below which drift is reported."
    )


class FoundationModelSpec(KibanModel):
    """Desired state of a served foundation model."""

    model: ModelSource = Field(description="The model: source URI, size, dtype and quantization.")
    accelerator: AcceleratorSpec = Field(description="Accelerator profile and GPUs per replica.")
    scaling: ScalingSpec = Field(description="Replica bounds and the latency SLO the autoscaler keeps.")
    engine: EngineSpec = _section(EngineSpec, "vLLM engine image, limits and extra flags.")
    cache: CacheSpec = _section(CacheSpec, "Writable model cache volume.")
    adapters: list[Adapter] = Field(
        default_factory=list, max_length=64, description="LoRA adapters served beside the base model."
    )
    scheduling: SchedulingSpec = _section(SchedulingSpec, "Extra node selector, tolerations, affinity, priority.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret holding the API key clients must send as a Bearer token. Given to vLLM as the "
            "VLLM_API_KEY environment variable, never on the command line. It guards /v1 only."
        ),
    )
    exposure: ExposureSpec = _section(ExposureSpec, "Service type, OpenShift Route and NetworkPolicy.")
    drift: DriftSpec = _section(DriftSpec, "Workload drift detection.")

    cel_rules = (
        CelRule(
            rule="self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
            message="spec.adapters names must be unique",
            check=lambda s: len({a.name for a in s.adapters}) == len(s.adapters),
            field_path=".adapters",
        ),
        CelRule(
            rule=(
                "!has(self.model.servedModelName) || "
                "self.adapters.all(a, a.name != self.model.servedModelName)"
            ),
            message="spec.adapters names must differ from spec.model.servedModelName",
            check=lambda s: s.model.served_model_name is None
            or all(a.name != s.model.served_model_name for a in s.adapters),
            field_path=".adapters",
        ),
        CelRule(
            rule=(
                "!has(self.scaling.gpuBudget) || type(self.accelerator.gpusPerReplica) == string || "
                "self.scaling.gpuBudget >= self.scaling.minReplicas * int(self.accelerator.gpusPerReplica)"
            ),
            message="spec.scaling.gpuBudget must cover minReplicas x spec.accelerator.gpusPerReplica",
            check=lambda s: s.scaling.gpu_budget is None
            or not isinstance(s.accelerator.gpus_per_replica, int)
            or s.scaling.gpu_budget >= s.scaling.min_replicas * s.accelerator.gpus_per_replica,
            field_path=".scaling.gpuBudget",
        ),
    )

    def served_model_name(self, metadata_name: str) -> str:
        """The OpenAI model name: spec.model.servedModelName, else the resource's name."""
        return self.model.served_model_name or metadata_name


# --------------------------------------------------------------------------- status


class ConditionType(StrEnum):
    ready = "Ready"
    progressing = "Progressing"
    degraded = "Degraded"
    scheduled = "Scheduled"
    scaling_limited = "ScalingLimited"
    metrics_available = "MetricsAvailable"
    drift_detected = "DriftDetected"


class StatusModel(KibanModel):
    """Status is written by the operator: tolerate fields a newer operator added."""

    model_config = ConfigDict(extra="ignore")


class Condition(StatusModel):
    """One observation of the FoundationModel (metav1.Condition shape)."""

    type: str = Field(
        pattern=r"^[A-Z][A-Za-z0-9]*$",
        max_length=316,
        description="Ready, Progressing, Degraded, Scheduled, ScalingLimited, MetricsAvailable or DriftDetected.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
        description="CamelCase reason for the last transition, e.g. ModelDoesNotFit.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When status last changed (RFC 3339).",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed from."
    )


class ResolvedStatus(StatusModel):
    """What the operator resolved from the spec and its configuration."""

    accelerator: str | None = Field(default=None, description="Accelerator profile in use.")
    gpus_per_replica: int | None = Field(default=None, description="GPUs per replica.")
    tensor_parallel_size: int | None = Field(default=None, description="Tensor-parallel degree.")
    pipeline_parallel_size: int | None = Field(default=None, description="Pipeline-parallel degree.")
    image: str | None = Field(default=None, description="Engine image in use.")
    served_model_name: str | None = Field(default=None, description="OpenAI model name.")
    sizing_reason: str | None = Field(default=None, description="Why this GPU count, e.g. AutoSized.")
    sizing_message: str | None = Field(default=None, description="The memory arithmetic behind the GPU count.")


class FittedParameter(StatusModel):
    """One engine parameter: the datasheet prior, what the online fit learned, and its sd."""

    prior: float | None = Field(default=None, description="The engine profile's (datasheet) value.")
    fitted: float | None = Field(default=None, description="The posterior mode after the evidence so far.")
    sd: float | None = Field(default=None, description="Posterior standard deviation (statistical only).")


class ColdStartStatus(StatusModel):
    """Creation to Ready of the model's own pods: the look-ahead a scale-up needs."""

    prior_seconds: float | None = Field(default=None, description="The engine profile's start-up estimate.")
    learned_seconds: float | None = Field(
        default=None, description="The slowest recent pod of the revision (a pod still starting counts as it waits)."
    )
    samples: int | None = Field(default=None, description="Pods of the revision seen becoming Ready.")


class EngineFitStatus(StatusModel):
    """The engine the capacity model sizes with: learned online from vLLM's metrics, the profile as prior."""

    alpha_ms: FittedParameter | None = Field(default=None, description="Decode step time at zero batch (ms).")
    beta_ms: FittedParameter | None = Field(default=None, description="Extra step time per decoding sequence (ms).")
    gamma_ms: FittedParameter | None = Field(default=None, description="Fixed cost of a step that prefills (ms).")
    delta_ms: FittedParameter | None = Field(default=None, description="Prefill time per prompt token (ms).")
    mixed_step_cost: str | None = Field(
        default=None, description="What a step mixing prefill and decodes pays as fixed cost: gamma or alpha."
    )
    observations: float | None = Field(
        default=None, description="Engine steps and requests behind the fit (decayed over 30 min)."
    )
    capacity_prior_rps: float | None = Field(
        default=None, description="Capacity per replica with the datasheet prior, at the current token means."
    )
    capacity_fitted_rps: float | None = Field(
        default=None, description="Capacity per replica with the fitted engine, at the current token means."
    )
    cold_start: ColdStartStatus | None = Field(default=None, description="Learned creation-to-Ready time.")


class ScalingStatus(StatusModel):
    """The autoscaler's latest decision and what it predicts."""

    desired_replicas: int | None = Field(default=None, description="Replicas the autoscaler asked for.")
    reason: str | None = Field(default=None, description="Why, in words.")
    predicted_ttft_p95_ms: float | None = Field(default=None, description="Predicted p95 TTFT at desiredReplicas.")
    predicted_itl_p95_ms: float | None = Field(default=None, description="Predicted p95 ITL at desiredReplicas.")
    capacity_per_replica_rps: float | None = Field(
        default=None, description="Requests per second one replica serves within the SLO."
    )
    arrival_rate_rps: float | None = Field(default=None, description="Observed arrival rate, requests per second.")
    last_scale_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When replicas last changed."
    )
    engine: EngineFitStatus | None = Field(
        default=None, description="The engine as learned online: prior, fitted value and sd per parameter."
    )


class DriftStatus(StatusModel):
    """Latest drift evaluation."""

    detected: bool | None = Field(default=None, description="Whether drift is detected.")
    js_divergence: float | None = Field(default=None, description="Largest Jensen-Shannon divergence.")
    p_value: float | None = Field(default=None, description="Smallest Kolmogorov-Smirnov p-value.")
    message: str | None = Field(default=None, description="What moved.")
    last_evaluation_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When drift was last evaluated."
    )


class FoundationModelStatus(StatusModel):
    """Observed state, rebuilt from the cluster on every reconcile."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Current conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int | None = Field(default=None, description="Engine pods that exist (scale subresource).")
    ready_replicas: int | None = Field(default=None, description="Engine pods ready to serve.")
    selector: str | None = Field(default=None, description="Label selector of the engine pods (scale subresource).")
    endpoint: str | None = Field(default=None, description="OpenAI base URL inside the cluster, e.g. http://NAME.NS.svc:8000/v1.")
    resolved: ResolvedStatus | None = Field(default=None, description="Settings resolved by the operator.")
    scaling: ScalingStatus | None = Field(default=None, description="Latest autoscaling decision.")
    drift: DriftStatus | None = Field(default=None, description="Latest drift evaluation.")


# --------------------------------------------------------------------------- the resource


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


def plain(value: Any) -> Any:
    """Mapping views (kopf bodies, index entries) to plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class FoundationModel(BaseModel):
    """A whole FoundationModel object as stored by the API server."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    api_version: Literal["kiban.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["FoundationModel"] = KIND
    metadata: ObjectMeta
    spec: FoundationModelSpec
    status: FoundationModelStatus | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> FoundationModel:
        """Parse a dict or kopf body; raises pydantic.ValidationError naming the bad field."""
        return cls.model_validate(plain(obj))

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def served_model_name(self) -> str:
        return self.spec.served_model_name(self.metadata.name)
