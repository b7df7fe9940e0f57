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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic.alias_generators import to_camel

from kiban.api import engine_cel
from kiban.api.quantity import parse_quantity
from kiban.api.engine_policy import (
    MAX_EXTRA_ARG_LENGTH,
    MAX_EXTRA_ARGS,
    SECRET_ENV,
    TRUST_REMOTE_CODE,
    env_refusal,
    extra_args_problems,
    read_token,
)

GROUP = "kiban.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FoundationModel"
PLURAL = "foundationmodels"
SINGULAR = "foundationmodel"
SHORT_NAMES = ("fm",)

# hf://org/repo, pvc://claim[/path], s3://bucket[/prefix]; shared by the schema and the builders.
HF_URI = r"hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+"
PVC_URI = r"pvc://[a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?(/[^\s]*)?"
S3_URI = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?"
MODEL_URI_PATTERN = rf"^({HF_URI}|{PVC_URI}|{S3_URI})$"
ADAPTER_URI_PATTERN = rf"^({HF_URI}|{PVC_URI})$"
# a '.' or '..' path segment (the URI always has '://', so every segment follows a '/')
DOT_SEGMENT = r"/[.]{1,2}(/|$)"
PARAMETERS_PATTERN = r"^[0-9]+(\.[0-9]+)?[MBT]$"
# Kubernetes' quantity grammar (resource.ParseQuantity), without a sign, a trailing '.' or huge exponents
QUANTITY_PATTERN = r"^([0-9]{1,18}(\.[0-9]{1,18})?|\.[0-9]{1,18})(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][-+]?[0-9]{1,2})?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PROFILE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Served model and adapter names travel in OpenAI request bodies; keep them URL- and label-friendly.
SERVED_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
# IsEnvVarName (the strict form every Kubernetes version accepts); '.', '..' and '..x' are refused by CEL
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# IsConfigMapKey: Secret and ConfigMap keys
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# IsQualifiedName (label keys, taint keys, topology keys): [DNS-subdomain prefix/]name, name <= 63
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"
)
# IsValidLabelValue
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# A container image reference (distribution/reference's grammar, with an optional digest): no
# spaces, no upper-case repository, so the kubelet never reports InvalidImageName.
IMAGE_PATTERN = (
    r"^(([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?|"
    r"\[[0-9a-fA-F:]+\](:[0-9]+)?)/)?"
    r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
# A Hub revision: a branch, tag or commit; never starting with '-' (it follows --revision)
REVISION_PATTERN = r"^[A-Za-z0-9_][-A-Za-z0-9_./]*$"

POWERS_OF_TWO = (1, 2, 4, 8, 16)
# Values vLLM 0.33 accepts for --max-lora-rank.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MAX_PIPELINE_PARALLEL = 16
MAX_NODES_PER_REPLICA = 16  # the API's bound; the operator's own limit (KIBAN_MAX_NODES_PER_REPLICA) is lower

# The API server's types: an integer field refuses true and "2", a number field refuses true and
# "0.5" (pydantic's lax mode would coerce them, so `kiban crd validate` would disagree with it).
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]


@dataclass(frozen=True)
class CelRule:
    """A rule: CEL for the API server, `check` for Python, one message for both.

    message_expression / reason: the CEL messageExpression and K8s reason (FieldValueForbidden...);
    describe(model) -> the Python message when check fails (default: message).
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    message_expression: str | None = None
    reason: str | None = None
    describe: Callable[[Any], str] | None = None

    @classmethod
    def from_cel(cls, cel: Mapping[str, str], check: Callable[[Any], bool],
                 describe: Callable[[Any], str] | None = None) -> CelRule:
        return cls(cel["rule"], cel["message"], check, cel.get("fieldPath"), cel.get("messageExpression"),
                   cel.get("reason"), describe)

    def as_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.reason:
            out["reason"] = self.reason
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out

    def failure(self, model: Any) -> str:
        return self.describe(model) if self.describe else self.message


@dataclass(frozen=True)
class PythonCheck:
    """The Python side of CEL that lives on a field's own schema (list items, map keys): problems
    as messages naming the field; the CEL is in that field's json_schema_extra."""

    problems: Callable[[Any], list[str]]


def cel_validations(*rules: Mapping[str, str]) -> dict[str, Any]:
    """json_schema_extra carrying CEL rules on a field's own schema node."""
    return {"x-kubernetes-validations": [dict(r) for r in rules]}


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
    python_checks: ClassVar[tuple[PythonCheck, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> KibanModel:
        for check in self.python_checks:
            problems = check.problems(self)
            if problems:
                raise ValueError("; ".join(problems))
        for rule in self.cel_rules:
            if not rule.check(self):
                raise ValueError(rule.failure(self))
        return self


def _section(model: type[BaseModel], description: str) -> Any:
    """A nested object that defaults to `{}` in the schema, so the API server fills its defaults."""
    return Field(default_factory=model, description=description)


def _qualified_name_prefix(value: str) -> str:
    """IsQualifiedName's length rule the pattern cannot say: a prefix of at most 253 characters."""
    if "/" in value and value.index("/") > 253:
        raise ValueError(f"{value!r}: the prefix before '/' must be at most 253 characters")
    return value


# Kubernetes label keys / taint keys / topology keys, and label values (apimachinery's rules)
QualifiedName = Annotated[str, Field(
    pattern=QUALIFIED_NAME_PATTERN, max_length=317,
    json_schema_extra=cel_validations({
        "rule": "!self.contains('/') || self.indexOf('/') <= 253",
        "message": "a label key's prefix (before '/') must be at most 253 characters",
        "reason": "FieldValueInvalid"}),
), AfterValidator(_qualified_name_prefix)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]


def _label_map(description: str, max_properties: int, where: str) -> Any:
    """A map of label keys to label values, checked as Kubernetes checks labels and selectors.

    The keys' rule is CEL on the map (a structural schema has no propertyNames); values have a pattern.
    """
    rule = {
        "rule": (f"self.all(k, k.size() <= 317 && k.matches({engine_cel.quote(QUALIFIED_NAME_PATTERN)}) && "
                 "(!k.contains('/') || k.indexOf('/') <= 253))"),
        "message": f"{where}: keys must be label keys ([DNS-subdomain prefix/]name, name at most 63 characters)",
        "reason": "FieldValueInvalid",
    }
    return Field(
        default_factory=dict,
        description=description,
        json_schema_extra={"maxProperties": max_properties, **cel_validations(rule)},
    )


def _config_key_rule(camel: str, python: str, where: str) -> CelRule:
    """IsConfigMapKey's rule the pattern cannot say: not '.', not '..', not starting with '..'."""
    return CelRule(
        rule=f"self.{camel} != '.' && !self.{camel}.startsWith('..')",
        message=f"{where} must not be '.' or start with '..'",
        check=lambda m: (v := getattr(m, python)) != "." and not v.startswith(".."),
        field_path=f".{camel}",
    )


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
        pattern=CONFIG_KEY_PATTERN,
        max_length=253,
        description="Key inside the Secret whose value is used.",
    )

    cel_rules = (_config_key_rule("key", "key", "the Secret key"),)


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
        pattern=REVISION_PATTERN,
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
    max_model_len: StrictInt | None = Field(
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
        CelRule(
            rule=f"!self.uri.matches({engine_cel.quote(DOT_SEGMENT)})",
            message="spec.model.uri must not have '.' or '..' path segments (it would leave the volume or repository)",
            check=lambda m: not re.search(DOT_SEGMENT, m.uri),
            field_path=".uri",
        ),
    )


# --------------------------------------------------------------------------- spec: engine


class SecretKeySelector(KibanModel):
    """Selects a key of a Secret or ConfigMap (named as Kubernetes names them)."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the Secret or ConfigMap.")
    key: str = Field(pattern=CONFIG_KEY_PATTERN, max_length=253, description="Key to read.")
    optional: bool | None = Field(default=None, description="Whether a missing object or key is allowed.")

    cel_rules = (_config_key_rule("key", "key", "valueFrom key"),)


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
        CelRule(
            rule="self.name != '.' && !self.name.startsWith('..')",
            message="spec.engine.env name must not be '.' or start with '..'",
            check=lambda e: e.name != "." and not e.name.startswith(".."),
            field_path=".name",
        ),
        CelRule.from_cel(
            engine_cel.env_name_rule(),
            check=lambda e: env_refusal(e.name) is None,
            describe=lambda e: f"{e.name} is refused: {env_refusal(e.name)}",
        ),
        CelRule.from_cel(
            engine_cel.env_secret_rule(),
            check=lambda e: e.name not in SECRET_ENV or e.value is None,
            describe=lambda e: (f"{e.name} is a credential: take it from a Secret (valueFrom.secretKeyRef or "
                                "spec.model.credentialsSecretRef), never a literal value"),
        ),
    )


# Container resources the engine may ask for: the standard ones, and extended resources
# (DOMAIN/NAME, e.g. rdma/hca), which Kubernetes counts in whole units with requests equal to limits.
STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
EXTENDED_RESOURCE_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"
)


def _is_resource_name(name: str) -> bool:
    """validateContainerResourceName, without hugepages: a standard name, or an extended resource."""
    if name in STANDARD_RESOURCES:
        return True
    return (len(name) <= 244 and re.match(EXTENDED_RESOURCE_PATTERN, name) is not None
            and "kubernetes.io/" not in name and not name.startswith("requests."))


def _resource_name_cel(k: str) -> str:
    return (f"({k} in {list(STANDARD_RESOURCES)!r} || ({k}.size() <= 244 && "
            f"{k}.matches({engine_cel.quote(EXTENDED_RESOURCE_PATTERN)}) && "
            f"!{k}.contains('kubernetes.io/') && !{k}.startsWith('requests.')))").replace('"', "'")


def _requests_fit_limits(r: ResourceRequirements) -> bool:
    for name, value in r.requests.items():
        if name not in r.limits:
            if name not in STANDARD_RESOURCES:
                return False
            continue
        request, limit = parse_quantity(value), parse_quantity(r.limits[name])
        if (request != limit) if name not in STANDARD_RESOURCES else (request > limit):
            return False
    return True


class ResourceRequirements(KibanModel):
    """CPU and memory for the engine container; the GPU resource is set by the operator."""

    requests: dict[str, Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]] = Field(
        default_factory=dict,
        description="Minimum resources, e.g. {cpu: '8', memory: 64Gi}.",
        json_schema_extra={"maxProperties": 16},
    )
    limits: dict[str, Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]] = Field(
        default_factory=dict,
        description="Maximum resources, e.g. {memory: 96Gi}. GPU limits are set from the accelerator profile.",
        json_schema_extra={"maxProperties": 16},
    )

    cel_rules = (
        CelRule(
            rule=(f"self.requests.all(k, {_resource_name_cel('k')}) && "
                  f"self.limits.all(k, {_resource_name_cel('k')})"),
            message=("spec.engine.resources: names must be cpu, memory, ephemeral-storage or an extended "
                     "resource DOMAIN/NAME (hugepages and kubernetes.io/ names are refused)"),
            check=lambda r: all(_is_resource_name(k) for k in (*r.requests, *r.limits)),
        ),
        CelRule(
            rule=("self.requests.all(k, !(k in self.limits) || "
                  f"(k in {list(STANDARD_RESOURCES)!r} ? "
                  "quantity(self.requests[k]).compareTo(quantity(self.limits[k])) <= 0 : "
                  "quantity(self.requests[k]).compareTo(quantity(self.limits[k])) == 0)) && "
                  f"self.requests.all(k, k in {list(STANDARD_RESOURCES)!r} || k in self.limits)").replace('"', "'"),
            message=("spec.engine.resources.requests must not exceed limits, and an extended resource needs a "
                     "limit equal to its request"),
            check=_requests_fit_limits,
            field_path=".requests",
        ),
        CelRule(
            rule=(f"self.requests.all(k, k in {list(STANDARD_RESOURCES)!r} || self.requests[k].matches('^[0-9]{{1,9}}$')) && "
                  f"self.limits.all(k, k in {list(STANDARD_RESOURCES)!r} || self.limits[k].matches('^[0-9]{{1,9}}$'))"
                  ).replace('"', "'"),
            message="spec.engine.resources: extended resources are counted in whole units (a plain integer)",
            check=lambda r: all(re.fullmatch(r"[0-9]{1,9}", v) for k, v in (*r.requests.items(), *r.limits.items())
                                if k not in STANDARD_RESOURCES),
        ),
    )



def _extra_args_problems(engine: EngineSpec) -> list[str]:
    # --trust-remote-code is checked with spec.model.trustRemoteCode on FoundationModelSpec
    return extra_args_problems(engine.extra_args, trust_remote_code=True)


class EngineSpec(KibanModel):
    """The vLLM engine: image, batch limits, memory use and any extra flags."""

    image: str | None = Field(
        default=None,
        pattern=IMAGE_PATTERN,
        max_length=512,
        description=(
            "vLLM OpenAI server image. Defaults to the operator's configured image "
            "(KIBAN_VLLM_IMAGE, itself defaulting to the pinned vllm/vllm-openai:v0.33.0), so a "
            "disconnected cluster can point every model at a mirror."
        ),
    )
    max_num_seqs: StrictInt | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Most sequences in one batch (--max-num-seqs). Defaults to vLLM's own choice.",
    )
    gpu_memory_utilization: StrictFloat = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of each GPU's memory vLLM may use (--gpu-memory-utilization); also used for sizing.",
    )
    extra_args: list[Annotated[str, Field(
        max_length=MAX_EXTRA_ARG_LENGTH,
        json_schema_extra=cel_validations(engine_cel.known_option_rule(), engine_cel.refused_option_rule()),
    )]] = Field(
        default_factory=list,
        max_length=MAX_EXTRA_ARGS,
        description=(
            "Further `vllm serve` arguments, read as vLLM 0.33 reads them (--x=y or --x y, _ for -, "
            "--x.field for JSON fields, short aliases). Refused by the API server, naming the argument: "
            "options vllm serve does not have or that are abbreviated, values no option takes, options "
            "the operator sets from the spec (--served-model-name, --port, --tensor-parallel-size, "
            "--max-model-len, --lora-modules, --download-dir, ...), options that widen what the engine or "
            "its clients may do (--allowed-local-media-path, --trust-request-chat-template, ...), and "
            "--trust-remote-code unless spec.model.trustRemoteCode. A value starting with '-' goes "
            "inline (--seed=-1). The list and reasons: docs/security.md."
        ),
        json_schema_extra=cel_validations(engine_cel.arity_rule("self")),
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra environment variables for the engine container. Names the operator sets (HF_HOME, "
            "VLLM_API_KEY, ...) or that open the engine up (VLLM_SERVER_DEV_MODE, LD_PRELOAD, "
            "PYTHONPATH, NVIDIA_VISIBLE_DEVICES, ...) are refused, and credentials (HF_TOKEN, ...) only "
            "come from a Secret: docs/security.md."
        ),
    )
    resources: ResourceRequirements = _section(
        ResourceRequirements, "CPU and memory requests and limits for the engine container."
    )

    python_checks = (PythonCheck(_extra_args_problems),)
    cel_rules = (
        CelRule(
            rule="self.env.all(e, self.env.exists_one(o, o.name == e.name))",
            message="spec.engine.env names must be unique",
            check=lambda e: len({v.name for v in e.env}) == len(e.env),
            field_path=".env",
        ),
    )


# --------------------------------------------------------------------------- spec: accelerator


GpuCount = Literal["auto"] | StrictInt


def _number(value: GpuCount) -> int | None:
    return value if isinstance(value, int) else None


def _range_rule(field: str, python_name: str, high: int) -> CelRule:
    return CelRule(
        rule=f"type(self.{field}) == string ? self.{field} == 'auto' : (int(self.{field}) >= 1 && int(self.{field}) <= {high})",
        message=f"spec.accelerator.{field} must be 'auto' or a number from 1 to {high}",
        check=lambda a: getattr(a, python_name) == "auto" or 1 <= getattr(a, python_name) <= high,
        field_path=f".{field}",
    )


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
            "GPUs per replica, 'auto' or a power of two. auto: tensorParallelSize x pipelineParallelSize "
            "when those are numbers, else the smallest power of two whose memory holds the weights plus "
            "a KV-cache reserve on one node, else whole nodes (see nodesPerReplica). More GPUs than "
            "tensorParallelSize adds pipeline parallelism; more than one node holds spans nodes."
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
    pipeline_parallel_size: GpuCount = Field(
        default="auto",
        description=(
            "Pipeline-parallel degree (--pipeline-parallel-size), 'auto' or 1-16. auto: gpusPerReplica / "
            "tensorParallelSize when both are numbers; else 1 on one node, and one stage per node when the "
            "model needs more than a node (or stages added until a pinned tensorParallelSize fits)."
        ),
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    nodes_per_replica: GpuCount = Field(
        default="auto",
        description=(
            "Nodes one replica spans, 'auto' or 1-16. auto: the fewest nodes whose GPUs hold the weights "
            "plus the KV-cache reserve, up to the operator's KIBAN_MAX_NODES_PER_REPLICA (default 4). A "
            "replica on more than one node is one LeaderWorkerSet group (leaderworkerset.x-k8s.io/v1): "
            "one pod per node, tensor parallel within a node, pipeline stages across nodes."
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
        _range_rule("pipelineParallelSize", "pipeline_parallel_size", MAX_PIPELINE_PARALLEL),
        _range_rule("nodesPerReplica", "nodes_per_replica", MAX_NODES_PER_REPLICA),
        CelRule(
            rule=(
                "type(self.gpusPerReplica) == string || type(self.tensorParallelSize) == string || "
                "type(self.pipelineParallelSize) == string || int(self.gpusPerReplica) == "
                "int(self.tensorParallelSize) * int(self.pipelineParallelSize)"
            ),
            message="spec.accelerator.pipelineParallelSize must be gpusPerReplica / tensorParallelSize",
            check=lambda a: None in (_number(a.gpus_per_replica), _number(a.tensor_parallel_size),
                                     _number(a.pipeline_parallel_size))
            or a.gpus_per_replica == a.tensor_parallel_size * a.pipeline_parallel_size,
            field_path=".pipelineParallelSize",
        ),
        CelRule(
            rule=(
                "type(self.nodesPerReplica) == string || type(self.pipelineParallelSize) == string || "
                "int(self.pipelineParallelSize) % int(self.nodesPerReplica) == 0"
            ),
            message=(
                "spec.accelerator.nodesPerReplica must divide pipelineParallelSize: tensor parallel stays "
                "within a node, pipeline stages are split evenly across nodes"
            ),
            check=lambda a: None in (_number(a.nodes_per_replica), _number(a.pipeline_parallel_size))
            or a.pipeline_parallel_size % a.nodes_per_replica == 0,
            field_path=".nodesPerReplica",
        ),
        CelRule(
            rule=(
                "type(self.nodesPerReplica) == string || type(self.gpusPerReplica) == string || "
                "(int(self.gpusPerReplica) % int(self.nodesPerReplica) == 0 && "
                "(type(self.tensorParallelSize) == string || "
                "int(self.gpusPerReplica) % (int(self.tensorParallelSize) * int(self.nodesPerReplica)) == 0))"
            ),
            message=(
                "spec.accelerator.nodesPerReplica must divide gpusPerReplica into whole tensor-parallel "
                "groups per node (gpusPerReplica a multiple of tensorParallelSize x nodesPerReplica)"
            ),
            check=lambda a: None in (_number(a.nodes_per_replica), _number(a.gpus_per_replica))
            or (a.gpus_per_replica % a.nodes_per_replica == 0
                and (_number(a.tensor_parallel_size) is None
                     or a.gpus_per_replica % (a.tensor_parallel_size * a.nodes_per_replica) == 0)),
            field_path=".nodesPerReplica",
        ),
    )


# --------------------------------------------------------------------------- spec: scaling


class SloSpec(KibanModel):
    """Latency objectives the autoscaler sizes the model to (milliseconds)."""

    ttft_p95_ms: StrictInt | None = Field(
        default=None, ge=1, le=600_000, description="95th-percentile time to first token, milliseconds."
    )
    ttft_p99_ms: StrictInt | None = Field(
        default=None, ge=1, le=600_000, description="99th-percentile time to first token, milliseconds."
    )
    itl_p95_ms: StrictInt | None = Field(
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

    min_replicas: StrictInt = Field(
        default=1, ge=0, le=1000, description="Fewest replicas; 0 allows scaling to zero when idle."
    )
    max_replicas: StrictInt = Field(default=1, ge=1, le=1000, description="Most replicas.")
    replicas: StrictInt | None = Field(
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
    target_utilization: StrictFloat = Field(
        default=0.75,
        gt=0.0,
        lt=1.0,
        description="Highest fraction of a replica's predicted capacity to plan for, in (0, 1): headroom for bursts.",
    )
    peak_factor: StrictFloat = Field(
        default=1.0, ge=1.0, le=100.0, description="Multiplier on the observed arrival rate before sizing (>= 1)."
    )
    gpu_budget: StrictInt | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Most GPUs all replicas together may use; caps replicas at gpuBudget / GPUs per replica.",
    )
    stabilization_window_seconds: StrictInt = Field(
        default=600,
        ge=0,
        le=3600,
        description="Scale down only to the highest replica count recommended within this many seconds.",
    )
    scale_to_zero_idle_seconds: StrictInt | None = Field(
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


# --------------------------------------------------------------------------- spec: rollout


class RolloutSpec(KibanModel):
    """How a spec change replaces running replicas (for a multi-node model: whole groups). With a
    ReadWriteOnce or ReadWriteOncePod cache the Deployment is replaced by Recreate instead (a surge
    pod could never mount the cache), and these are ignored."""

    max_surge: StrictInt = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "Extra replicas a rollout may start above the desired count (maxSurge). For a multi-node "
            "model each is a whole group of nodesPerReplica nodes."
        ),
    )
    max_unavailable: StrictInt = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "Replicas a rollout may take down at once (maxUnavailable). The operator lowers it so that "
            "ready replicas never drop below spec.scaling.minReplicas; when that leaves nothing to "
            "roll with, one replica surges instead."
        ),
    )

    cel_rules = (
        CelRule(
            rule="self.maxSurge + self.maxUnavailable >= 1",
            message="spec.rollout.maxSurge and spec.rollout.maxUnavailable cannot both be 0",
            check=lambda r: r.max_surge + r.max_unavailable >= 1,
            field_path=".maxSurge",
        ),
    )

    def strategy(self, replicas: int, min_replicas: int) -> tuple[int, int]:
        """(maxSurge, maxUnavailable) for a workload of `replicas`: never below the ready minimum."""
        unavailable = min(self.max_unavailable, max(0, replicas - min_replicas))
        surge = self.max_surge if self.max_surge or unavailable else 1
        return surge, unavailable


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
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253,
        description="StorageClass of the PVC; the cluster default when unset.",
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        default="ReadWriteMany",
        description=(
            "PVC access mode. ReadWriteMany lets replicas on different nodes share one download. "
            "ReadWriteOnce and ReadWriteOncePod mount on one node (one pod) only, so they need "
            "spec.scaling.maxReplicas 1, and rollouts replace the pod instead of surging a second one."
        ),
    )

    cel_rules = (
        CelRule(
            rule="self.type != 'pvc' || has(self.size)",
            message="spec.cache.size is required when spec.cache.type is pvc",
            check=lambda c: c.type != CacheVolumeType.pvc or c.size is not None,
            field_path=".size",
        ),
        CelRule(
            rule="!has(self.size) || quantity(self.size).isGreaterThan(quantity('0'))",
            message="spec.cache.size must be greater than zero",
            check=lambda c: c.size is None or parse_quantity(c.size) > 0,
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
        description=(
            "hf://ORG/REPO (vLLM downloads it) or pvc://CLAIM/PATH (mounted read-only); no '.' or '..' "
            "segments, and no '=' or ',' (vLLM's --lora-modules NAME=PATH cannot carry them)."
        ),
    )
    rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] | None = Field(
        default=None,
        description="The adapter's LoRA rank; --max-lora-rank is set to the largest. vLLM's default (16) when unset.",
    )

    cel_rules = (
        CelRule(
            rule=f"!self.uri.matches({engine_cel.quote(DOT_SEGMENT)}) && !self.uri.contains('=') && !self.uri.contains(',')",
            message=("spec.adapters[].uri must not have '.' or '..' path segments, '=' or ',' "
                     "(vLLM reads --lora-modules as NAME=PATH)"),
            check=lambda a: not re.search(DOT_SEGMENT, a.uri) and "=" not in a.uri and "," not in a.uri,
            field_path=".uri",
        ),
    )


# int64 fields, bounded where JSON numbers stay exact (the API server reads schema bounds as floats)
SAFE_INT = 2**53 - 1


class Toleration(KibanModel):
    """A Kubernetes toleration (core/v1 Toleration), checked as the Pod API checks it."""

    key: QualifiedName | None = Field(default=None, description="Taint key; empty matches all keys with Exists.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: LabelValue | None = Field(default=None, description="Taint value for Equal; empty with Exists.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: StrictInt | None = Field(
        default=None, ge=-SAFE_INT, le=SAFE_INT, description="For NoExecute: how long the pod stays bound."
    )

    cel_rules = (
        CelRule(
            rule="(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            message="spec.scheduling.tolerations[].operator must be Exists when key is empty (it matches every taint)",
            check=lambda t: bool(t.key) or t.operator == "Exists",
            field_path=".operator",
        ),
        CelRule(
            rule="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="spec.scheduling.tolerations[].value must be empty when operator is Exists",
            check=lambda t: t.operator != "Exists" or not t.value,
            field_path=".value",
        ),
        CelRule(
            rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="spec.scheduling.tolerations[].effect must be NoExecute when tolerationSeconds is set",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            field_path=".effect",
        ),
    )


# ---- core/v1 Affinity, typed so the API server checks it as the Pod API does (validateAffinity)


class NodeSelectorRequirement(KibanModel):
    """A node label requirement (core/v1 NodeSelectorRequirement)."""

    key: QualifiedName = Field(description="Node label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(description="How key relates to values.")
    values: list[LabelValue] = Field(default_factory=list, max_length=64, description="Label values (one integer for Gt, Lt).")

    cel_rules = (
        CelRule(
            rule=("self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : "
                  "self.operator in ['Exists', 'DoesNotExist'] ? size(self.values) == 0 : size(self.values) == 1"),
            message="affinity: In and NotIn need values, Exists and DoesNotExist take none, Gt and Lt exactly one",
            check=lambda r: (len(r.values) > 0 if r.operator in ("In", "NotIn")
                             else len(r.values) == 0 if r.operator in ("Exists", "DoesNotExist")
                             else len(r.values) == 1),
            field_path=".values",
        ),
    )


class NodeFieldRequirement(KibanModel):
    """A node field requirement (matchFields): only metadata.name, In or NotIn, one value."""

    key: Literal["metadata.name"] = Field(description="The only node field selector key: metadata.name.")
    operator: Literal["In", "NotIn"] = Field(description="In or NotIn.")
    values: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]] = Field(
        min_length=1, max_length=1, description="Exactly one node name."
    )


class NodeSelectorTerm(KibanModel):
    """Node requirements ANDed together (core/v1 NodeSelectorTerm)."""

    match_expressions: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=16,
                                                             description="Requirements on node labels.")
    match_fields: list[NodeFieldRequirement] = Field(default_factory=list, max_length=4,
                                                     description="Requirements on node fields.")


class NodeSelector(KibanModel):
    """Terms ORed together (core/v1 NodeSelector)."""

    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=16,
                                                        description="At least one term.")


class PreferredSchedulingTerm(KibanModel):
    """A weighted node preference."""

    weight: StrictInt = Field(ge=1, le=100, description="1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred nodes.")


class NodeAffinity(KibanModel):
    """Node affinity (core/v1 NodeAffinity)."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pod must land on.")
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=16, description="Nodes the pod prefers.")


class LabelSelectorRequirement(KibanModel):
    """A label requirement (metav1.LabelSelectorRequirement)."""

    key: QualifiedName = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How key relates to values.")
    values: list[LabelValue] = Field(default_factory=list, max_length=64, description="Label values.")

    cel_rules = (
        CelRule(
            rule="self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
            message="labelSelector: In and NotIn need values, Exists and DoesNotExist take none",
            check=lambda r: (len(r.values) > 0) if r.operator in ("In", "NotIn") else not r.values,
            field_path=".values",
        ),
    )


class LabelSelector(KibanModel):
    """A label selector (metav1.LabelSelector)."""

    match_labels: dict[QualifiedName, LabelValue] = _label_map(
        "Labels that must all match.", 32, "labelSelector.matchLabels")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16,
                                                              description="Requirements ANDed together.")


class PodAffinityTerm(KibanModel):
    """Pods to be near (or away from) within a topology domain (core/v1 PodAffinityTerm)."""

    label_selector: LabelSelector | None = Field(default=None, description="The pods.")
    namespaces: list[Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]] = Field(
        default_factory=list, max_length=16, description="Namespaces of those pods; empty: this namespace.")
    namespace_selector: LabelSelector | None = Field(default=None, description="Namespaces of those pods, by label.")
    topology_key: QualifiedName = Field(description="Node label whose value is the domain, e.g. kubernetes.io/hostname.")


class WeightedPodAffinityTerm(KibanModel):
    """A weighted pod (anti-)affinity preference."""

    weight: StrictInt = Field(ge=1, le=100, description="1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(KibanModel):
    """Pod affinity or anti-affinity (core/v1 PodAffinity / PodAntiAffinity)."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=16, description="Terms the pod must satisfy.")
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=16, description="Terms the pod prefers.")


class Affinity(KibanModel):
    """core/v1 Affinity (matchLabelKeys and mismatchLabelKeys are not offered)."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Pod anti-affinity.")


class SchedulingSpec(KibanModel):
    """Pod placement passed through to the engine pods, added to the accelerator profile's own."""

    node_selector: dict[QualifiedName, LabelValue] = _label_map(
        "Extra node labels to require; a key here overrides the profile's.", 32, "spec.scheduling.nodeSelector")
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Extra tolerations, added to the profile's (nvidia.com/gpu Exists NoSchedule).",
    )
    affinity: Affinity | None = Field(
        default=None,
        description="core/v1 Affinity of the engine pods, checked as the Pod API checks it.",
    )
    priority_class_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253,
        description=(
            "PriorityClass of the engine pods. system-* classes are refused: they preempt the "
            "cluster's critical pods (and Kubernetes admits them in kube-system only)."
        ),
    )

    cel_rules = (
        CelRule(
            rule="!has(self.priorityClassName) || !self.priorityClassName.startsWith('system-')",
            message="spec.scheduling.priorityClassName: system-* priority classes are refused (they preempt critical pods)",
            check=lambda s: not (s.priority_class_name or "").startswith("system-"),
            field_path=".priorityClassName",
        ),
    )


class GatewaySpec(KibanModel):
    """How the Kiban gateway serves the model: whether it does, routing, and holding while it wakes."""

    enabled: bool | None = Field(
        default=None,
        description=(
            "Reach the model through the Kiban gateway (`kiban gateway`), which checks the API key on "
            "every path, forwards only the OpenAI /v1 inference paths, routes by load (and prefix), "
            "and holds requests while the model wakes from zero. The engine pods then admit traffic "
            "only from the gateway and the monitoring namespace. Unset: the operator's default "
            "(on when the Helm chart installs the gateway) unless exposure asks for direct access "
            "(serviceType NodePort/LoadBalancer, route or allowedNamespaceLabels)."
        ),
    )
    routing: Literal["LeastOutstanding", "PrefixAffinity"] = Field(
        default="LeastOutstanding",
        description=(
            "LeastOutstanding: each request goes to the ready pod with the fewest requests in flight. "
            "PrefixAffinity: requests whose prompts open alike go to the same pod (its prefix cache "
            "holds them), by consistent hashing with bounded load (no pod above loadFactor x the mean)."
        ),
    )
    prefix_characters: int = Field(
        default=512, ge=16, le=65_536,
        description=(
            "PrefixAffinity: characters of the prompt's opening hashed (chat: the system messages and "
            "the first user message), about a quarter as many tokens."
        ),
    )
    load_factor: float = Field(
        default=1.25, ge=1.0, le=10.0,
        description="PrefixAffinity: most a pod may carry, as a multiple of the mean in-flight load, before its keys move on.",
    )
    max_held_requests: int = Field(
        default=256, ge=0, le=100_000,
        description=(
            "Requests each gateway replica holds for the model while it has no ready replica (waking "
            "from zero, or all pods restarting); more are answered 503 with Retry-After. 0 holds none."
        ),
    )
    max_hold_seconds: int = Field(
        default=300, ge=1, le=3600,
        description=(
            "Longest a request is held waiting for a ready replica before it is answered 503 with "
            "Retry-After. Cover a cold start: scheduling, image pull and model load."
        ),
    )


class ExposureSpec(KibanModel):
    """How clients reach the model."""

    gateway: GatewaySpec = _section(GatewaySpec, "The Kiban gateway: on or off, routing, holding while waking.")
    inference_pool: bool | None = Field(
        default=None,
        description=(
            "Create an InferencePool (inference.networking.k8s.io/v1) selecting the engine pods and "
            "port, for a cluster's own inference gateway. Unset: created when that API is served."
        ),
    )
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
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253,
        description="Route host (a DNS name); the router's generated host when unset.",
    )
    network_policy: bool = Field(
        default=True,
        description=(
            "Create a NetworkPolicy allowing port 8000 only from the Kiban gateway and the operator's "
            "monitoring namespace when the model is exposed through the gateway; otherwise from this "
            "namespace, allowedNamespaceLabels, the monitoring namespace and (with route) the OpenShift router."
        ),
    )
    allowed_namespace_labels: dict[QualifiedName, LabelValue] = _label_map(
        "Namespaces with all these labels may also reach the model.", 16, "spec.exposure.allowedNamespaceLabels")

    cel_rules = (
        CelRule(
            rule="!has(self.routeHost) || self.route",
            message="spec.exposure.routeHost needs spec.exposure.route true",
            check=lambda e: e.route_host is None or e.route,
            field_path=".routeHost",
        ),
        CelRule(
            rule="!has(self.gateway.enabled) || !self.gateway.enabled || self.serviceType == 'ClusterIP'",
            message=(
                "spec.exposure.serviceType must be ClusterIP with spec.exposure.gateway.enabled true: clients "
                "outside reach the gateway's own Service, and the engine pods admit only the gateway"
            ),
            check=lambda e: not e.gateway.enabled or e.service_type == "ClusterIP",
            field_path=".serviceType",
        ),
        CelRule(
            rule="!has(self.gateway.enabled) || !self.gateway.enabled || !self.route",
            message=(
                "spec.exposure.route exposes the engine's Service directly; with spec.exposure.gateway.enabled "
                "true expose the gateway instead"
            ),
            check=lambda e: not e.gateway.enabled or not e.route,
            field_path=".route",
        ),
        CelRule(
            rule="!has(self.gateway.enabled) || !self.gateway.enabled || size(self.allowedNamespaceLabels) == 0",
            message=(
                "spec.exposure.allowedNamespaceLabels opens the engine pods past the gateway; it needs "
                "spec.exposure.gateway.enabled false"
            ),
            check=lambda e: not e.gateway.enabled or not e.allowed_namespace_labels,
            field_path=".allowedNamespaceLabels",
        ),
    )

    def direct_access(self) -> bool:
        """Whether this exposure asks for clients to reach the engine pods without the gateway."""
        return self.service_type != "ClusterIP" or self.route or bool(self.allowed_namespace_labels)

    def through_gateway(self, default: bool) -> bool:
        """Whether clients reach the model through the Kiban gateway: gateway.enabled when set,
        else the operator's `default` unless the exposure asks for direct access."""
        if self.gateway.enabled is not None:
            return self.gateway.enabled
        return default and not self.direct_access()


class DriftSpec(KibanModel):
    """Workload drift detection on prompt and output token distributions."""

    enabled: bool = Field(default=False, description="Compare recent token distributions with a reference window.")
    window_seconds: StrictInt = Field(
        default=120, ge=30, le=86_400,
        description="Length of each drift window, seconds (the detector's measured default is 120).",
    )
    reference_window_seconds: StrictInt = Field(
        default=360, ge=30, le=2_592_000,
        description=(
            "Time the rolling reference covers, seconds: the last round(referenceWindowSeconds / "
            "windowSeconds) windows, at least one (default 360: 3 windows of 120 s, as measured)."
        ),
    )
    js_divergence_threshold: StrictFloat = Field(
        default=0.1, gt=0.0, le=1.0, description="Jensen-Shannon divergence above which drift is reported."
    )
    p_value_threshold: StrictFloat = Field(
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
    exposure: ExposureSpec = _section(
        ExposureSpec, "The Kiban gateway, Service type, OpenShift Route, NetworkPolicy and InferencePool."
    )
    drift: DriftSpec = _section(DriftSpec, "Workload drift detection.")
    rollout: RolloutSpec = _section(
        RolloutSpec, "How a spec change replaces replicas: maxSurge 1, maxUnavailable 0 by default."
    )

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
            rule="!has(self.apiKeySecretRef) || self.exposure.serviceType == 'ClusterIP'",
            message=(
                "spec.exposure.serviceType NodePort or LoadBalancer with spec.apiKeySecretRef would serve "
                "/invocations and /metrics to anyone without the key (vLLM's key guards /v1 only): expose the "
                "model through the Kiban gateway (spec.exposure.gateway.enabled true, serviceType ClusterIP), "
                "whose Service checks the key on every path"
            ),
            check=lambda s: s.api_key_secret_ref is None or s.exposure.service_type == "ClusterIP",
            field_path=".exposure.serviceType",
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
        CelRule.from_cel(
            engine_cel.trust_remote_code_rule(),
            check=lambda s: s.model.trust_remote_code or not any(
                (t := read_token(i, a)).is_option and t.key == TRUST_REMOTE_CODE
                for i, a in enumerate(s.engine.extra_args)),
        ),
        CelRule(
            rule="self.cache.type != 'pvc' || self.cache.accessMode == 'ReadWriteMany' || self.scaling.maxReplicas <= 1",
            message=("spec.cache.accessMode ReadWriteOnce or ReadWriteOncePod mounts on one node only: "
                     "spec.scaling.maxReplicas must be 1 (a second replica would wait forever on Multi-Attach), "
                     "or use ReadWriteMany"),
            check=lambda s: (s.cache.type != CacheVolumeType.pvc or s.cache.access_mode == "ReadWriteMany"
                             or s.scaling.max_replicas <= 1),
            field_path=".cache.accessMode",
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
    nodes_per_replica: int | None = Field(
        default=None, description="Nodes one replica spans; above 1 each replica is one LeaderWorkerSet group."
    )
    image: str | None = Field(default=None, description="Engine image in use.")
    served_model_name: str | None = Field(default=None, description="OpenAI model name.")
    sizing_reason: str | None = Field(default=None, description="Why this GPU count, e.g. AutoSized.")
    sizing_message: str | None = Field(default=None, description="The memory arithmetic behind the GPU count.")
    gateway: bool | None = Field(
        default=None, description="Whether clients reach the model through the Kiban gateway (spec.exposure.gateway)."
    )


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


class HeldRequests(StatusModel):
    """Requests one gateway replica holds for the model because no replica is ready."""

    requests: int = Field(ge=0, description="Requests held now.")
    since: str = Field(json_schema_extra={"format": "date-time"}, description="When the oldest was first held.")
    heartbeat: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When this entry was last refreshed; the autoscaler ignores entries older than a minute.",
    )


class GatewayStatus(StatusModel):
    """What the Kiban gateway reports about the model (written by the gateway, read by the autoscaler)."""

    held: dict[str, HeldRequests] = Field(
        default_factory=dict,
        description=(
            "Per gateway replica (pod name), the requests it holds while the model has no ready replica: "
            "the autoscaler's wake-from-zero signal."
        ),
        json_schema_extra={"maxProperties": 64},
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
    gateway: GatewayStatus | None = Field(default=None, description="Requests the Kiban gateway holds (wake from zero).")


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
