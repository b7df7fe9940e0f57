"""What `spec.engine.extraArgs` and `spec.engine.env` may say, read the way vLLM 0.33 reads them.

The boundary (docs/security.md): whoever creates a FoundationModel already chooses the engine
image and the Secrets its pods read, so extraArgs and env are not a sandbox. What they may not do:
(1) set what the operator sets from the spec (served name, port, parallelism, LoRA wiring, cache,
API key, ...): a later copy would silently win over the spec; (2) widen what the engine's API
clients may do (read pod files, reach unauthenticated control routes, send their own templates),
or run code that neither the image nor spec.model.trustRemoteCode allowed (Python or shared
libraries from a path, logging configs that build objects); (3) put a credential in the spec.

`vllm serve` parses its arguments with vLLM's FlexibleArgumentParser over Python's argparse
(allow_abbrev on). So an argument here is read as vLLM would: `--x=y` and `--x y`; underscores
for dashes before the first dot (`--api_key`); `--x.key v` as a JSON field of --x; short aliases
(`-tp 2`, `-qfp8`); `-O3`; BooleanOptionalAction's `--no-x` and vLLM's `--disable-x` inverse.
Kiban is stricter than vLLM in three places, each refused with a message saying how to write it:
abbreviations (vLLM expands a unique prefix: `--api-ke` is --api-key, and an abbreviation breaks
when a later vLLM adds a flag sharing the prefix), a value starting with '-' given as its own
argument (write `--seed=-1`), and `--` (everything after it would be a stray positional).

The same rules exist twice: as CEL in the CRD (the API server refuses at `kubectl apply`) and as
Python here (the operator refuses with InvalidSpec before touching the Deployment, for objects
stored under an older CRD; Helm never upgrades CRDs). The CEL text is generated from these tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kiban.api.vllm_flags import ARITY, CANONICAL, VLLM_VERSION

MAX_EXTRA_ARGS = 64
MAX_EXTRA_ARG_LENGTH = 1024
TRUST_REMOTE_CODE = "--trust-remote-code"
OPTIMIZATION_LEVEL_SHORT = "-O"  # vLLM rewrites -O3 / -O=3 / -O 3 to --optimization-level before argparse

# --------------------------------------------------------------------------- flags the operator owns

_SERVING = "the operator serves plain HTTP on 0.0.0.0:8000 (probes, Service, NetworkPolicy, Route, scrape)"
_REPLICAS = ("one engine per pod: the operator sets replicas (spec.scaling) and GPUs per replica "
             "(spec.accelerator)")
_MULTINODE = "multi-node wiring is the operator's (spec.accelerator)"
_ADAPTERS = "the operator sets it from spec.adapters"

# long flag -> what sets it instead (every option string of the flag is refused with it)
OWNED_FLAGS: dict[str, str] = {
    "--model": "the operator passes spec.model.uri as vLLM's positional model",
    "--served-model-name": "the operator sets it from spec.model.servedModelName (default metadata.name)",
    "--host": _SERVING,
    "--port": _SERVING,
    "--uds": _SERVING,
    "--grpc": _SERVING,
    "--grpc-port": _SERVING,
    "--root-path": "the operator owns the URL layout (probes on /health, the Route on /v1)",
    "--ssl-keyfile": _SERVING + "; terminate TLS at the Route or a gateway",
    "--ssl-certfile": _SERVING + "; terminate TLS at the Route or a gateway",
    "--ssl-ca-certs": _SERVING + "; terminate TLS at the Route or a gateway",
    "--ssl-cert-reqs": _SERVING + "; terminate TLS at the Route or a gateway",
    "--ssl-ciphers": _SERVING + "; terminate TLS at the Route or a gateway",
    "--enable-ssl-refresh": _SERVING + "; terminate TLS at the Route or a gateway",
    "--shutdown-timeout": "the operator drains in-flight requests on scale-down within the pod's grace period",
    "--api-key": "the operator gives vLLM spec.apiKeySecretRef as VLLM_API_KEY, never in args",
    "--tensor-parallel-size": "the operator sets it from spec.accelerator.tensorParallelSize (sizing)",
    "--pipeline-parallel-size": "the operator sets it from spec.accelerator.gpusPerReplica (sizing)",
    "--prefill-context-parallel-size": "it multiplies the GPUs a replica needs, which spec.accelerator sets",
    "--data-parallel-size": _REPLICAS,
    "--data-parallel-rank": _REPLICAS,
    "--data-parallel-start-rank": _REPLICAS,
    "--data-parallel-size-local": _REPLICAS,
    "--data-parallel-address": _REPLICAS,
    "--data-parallel-rpc-port": _REPLICAS,
    "--data-parallel-backend": _REPLICAS,
    "--data-parallel-hybrid-lb": _REPLICAS,
    "--data-parallel-external-lb": _REPLICAS,
    "--data-parallel-multi-port-external-lb": _REPLICAS,
    "--data-parallel-supervisor-port": _REPLICAS,
    "--dp-supervisor-probe-interval-s": _REPLICAS,
    "--dp-supervisor-probe-timeout-s": _REPLICAS,
    "--dp-supervisor-probe-failure-threshold": _REPLICAS,
    "--nnodes": _MULTINODE,
    "--node-rank": _MULTINODE,
    "--master-addr": _MULTINODE,
    "--master-port": _MULTINODE,
    "--headless": _MULTINODE,
    "--distributed-executor-backend": "the operator runs one multiprocessing engine per pod",
    "--dtype": "the operator sets it from spec.model.dtype",
    "--quantization": "the operator sets it from spec.model.quantization",
    "--max-model-len": "the operator sets it from spec.model.maxModelLen",
    "--gpu-memory-utilization": "the operator sets it from spec.engine.gpuMemoryUtilization (also used for sizing)",
    "--max-num-seqs": "the operator sets it from spec.engine.maxNumSeqs",
    "--revision": "the operator sets it from spec.model.revision",
    "--load-format": "the operator sets it from spec.model.uri (s3:// is streamed with runai_streamer)",
    "--download-dir": "the operator places the weights in the model cache (spec.cache, HF_HOME)",
    "--enable-lora": _ADAPTERS,
    "--lora-modules": _ADAPTERS,
    "--max-loras": _ADAPTERS,
    "--max-lora-rank": _ADAPTERS,
    "--max-cpu-loras": _ADAPTERS,
    "--disable-log-stats": "Kiban's autoscaler and drift detector read vLLM's Prometheus metrics, which it stops",
    "--custom-histogram-buckets": "Kiban's drift detector and dashboards read vLLM's default histogram buckets",
    "--config": "it reads further options from a file, which the API server cannot check",
    "--help": "it makes vllm serve print its help and exit",
    "--hf-token": ("a credential in args is visible in the pod spec and `ps`: use "
                   "spec.model.credentialsSecretRef (HF_TOKEN)"),
}
# the negated form of a flag whose positive form is checked elsewhere
OWNED_OPTION_STRINGS: dict[str, str] = {
    "--no-trust-remote-code": "set spec.model.trustRemoteCode instead",
}

# --------------------------------------------------------------------------- flags that widen

_CODE_FROM_PATH = ("it runs Python from a file path: code that neither the image nor "
                   "spec.model.trustRemoteCode allowed")
_CORS = "it opens the API to cross-origin browsers; set CORS at the Route or a gateway"

WIDENING_FLAGS: dict[str, str] = {
    "--allowed-local-media-path": "it lets API clients read the pod's files (file:// media URLs)",
    "--trust-request-chat-template": "it lets API clients send their own chat templates",
    "--trust-request-mm-kwargs": "it lets API clients set multimodal processing options (vLLM: trusted clients only)",
    "--enable-tokenizer-info-endpoint": "it serves /tokenizer_info outside the paths --api-key guards",
    "--profiler-config": "it serves /start_profile and /stop_profile, unauthenticated",
    "--enable-fault-tolerance": "it serves /fault_tolerance/apply, unauthenticated engine control",
    "--fault-tolerance-config": "it configures /fault_tolerance/apply, unauthenticated engine control",
    "--tool-server": "it lets the model call tool servers (or vLLM's demo Python tool) for any client",
    "--tool-parser-plugin": _CODE_FROM_PATH,
    "--reasoning-parser-plugin": _CODE_FROM_PATH,
    "--logging-config": "a Python logging config from a file can build arbitrary objects (code)",
    "--log-config-file": "a Python logging config from a file can build arbitrary objects (code)",
    "--allowed-origins": _CORS,
    "--allow-credentials": _CORS,
}

TRUST_REMOTE_CODE_REASON = (
    "it runs the model repository's own Python: set spec.model.trustRemoteCode: true instead"
)


@dataclass(frozen=True)
class FlagRefusal:
    long_flag: str
    category: str  # "owned" | "widening"
    reason: str


def _option_strings_of(long_flag: str) -> list[str]:
    """Every option string argparse registers for a long flag (itself, aliases, --no-/--disable- forms)."""
    return sorted({long_flag, *(o for o, c in CANONICAL.items() if c == long_flag)})


def _refusals() -> dict[str, FlagRefusal]:
    out: dict[str, FlagRefusal] = {}
    for category, table in (("owned", OWNED_FLAGS), ("widening", WIDENING_FLAGS)):
        for flag, reason in table.items():
            if flag not in ARITY:
                raise ValueError(f"{flag} is not a vllm serve {VLLM_VERSION} flag")
            for option in _option_strings_of(flag):
                out[option] = FlagRefusal(flag, category, reason)
    for option, reason in OWNED_OPTION_STRINGS.items():
        out[option] = FlagRefusal(CANONICAL.get(option, option), "owned", reason)
    return out


REFUSED_OPTIONS: dict[str, FlagRefusal] = _refusals()
REFUSED_KEYS: tuple[str, ...] = tuple(sorted(REFUSED_OPTIONS))
# every option string Kiban accepts in extraArgs, with its arity (plus vLLM's own -O shorthand)
KNOWN_OPTIONS: dict[str, str] = {**ARITY, OPTIMIZATION_LEVEL_SHORT: "one"}


REFUSAL_REASONS: tuple[str, ...] = tuple(sorted({r.reason for r in REFUSED_OPTIONS.values()}))
# short aliases and negated forms -> the long flag they belong to (named in messages)
REFUSED_ALIASES: dict[str, str] = {o: r.long_flag for o, r in REFUSED_OPTIONS.items() if o != r.long_flag}


def refusal_message(option: str) -> str:
    """'-tp (--tensor-parallel-size) is refused: <why>' (the CRD's message has the same words)."""
    refusal = REFUSED_OPTIONS[option]
    named = f"{option} ({REFUSED_ALIASES[option]})" if option in REFUSED_ALIASES else option
    return f"{named} is refused: {refusal.reason}"


# Arity as the CRD's CEL computes it (a test checks it against the generated ARITY for every
# option): switches are --no-X / --enable-X / --disable-X forms or one of SWITCHES; the rest take
# one value, MANY_VALUES several, OPTIONAL_VALUE zero or one. An unknown option reads as 'one'.
SWITCH_PREFIXES = ("--no-", "--enable-", "--disable-")
VALUE_TAKING_SWITCH_LOOKALIKES = tuple(sorted(
    o for o, a in ARITY.items() if o.startswith(SWITCH_PREFIXES) and a != "none"))
SWITCHES = tuple(sorted(o for o, a in ARITY.items() if a == "none" and not o.startswith(SWITCH_PREFIXES)))
MANY_VALUES = tuple(sorted(o for o, a in ARITY.items() if a == "many"))
OPTIONAL_VALUE = tuple(sorted(o for o, a in ARITY.items() if a == "optional"))


def arity_of(key: str) -> str:
    if key in MANY_VALUES:
        return "many"
    if key in OPTIONAL_VALUE:
        return "optional"
    if key in SWITCHES or (key.startswith(SWITCH_PREFIXES) and key not in VALUE_TAKING_SWITCH_LOOKALIKES):
        return "none"
    return "one"


# --------------------------------------------------------------------------- env

_OWNED_LOCATION = "the operator sets it (writable locations on a read-only root filesystem, spec.cache)"
_PARALLEL_ENV = "parallel and multi-node wiring is the operator's (spec.accelerator)"
_GPU_ENV = "GPU assignment is the device plugin's (spec.accelerator)"
_NATIVE_FROM_PATH = ("it loads code from a path: code that neither the image nor "
                     "spec.model.trustRemoteCode allowed")

REFUSED_ENV: dict[str, str] = {
    "VLLM_API_KEY": "the operator sets it from spec.apiKeySecretRef",
    "HOME": _OWNED_LOCATION,
    "HF_HOME": _OWNED_LOCATION,
    "HF_HUB_CACHE": _OWNED_LOCATION,
    "HUGGINGFACE_HUB_CACHE": _OWNED_LOCATION,
    "TRANSFORMERS_CACHE": _OWNED_LOCATION,
    "HF_MODULES_CACHE": _OWNED_LOCATION,
    "VLLM_CACHE_ROOT": _OWNED_LOCATION,
    "VLLM_CONFIG_ROOT": _OWNED_LOCATION,
    "VLLM_ASSETS_CACHE": _OWNED_LOCATION,
    "XDG_CACHE_HOME": _OWNED_LOCATION,
    "VLLM_NO_USAGE_STATS": "the operator turns vLLM's usage statistics off",
    "VLLM_USAGE_STATS_SERVER": "the operator turns vLLM's usage statistics off",
    "VLLM_PORT": "the operator owns the engine's ports",
    "VLLM_HOST_IP": _PARALLEL_ENV,
    "VLLM_DP_RANK": _PARALLEL_ENV,
    "VLLM_DP_RANK_LOCAL": _PARALLEL_ENV,
    "VLLM_DP_SIZE": _PARALLEL_ENV,
    "VLLM_DP_MASTER_IP": _PARALLEL_ENV,
    "VLLM_DP_MASTER_PORT": _PARALLEL_ENV,
    "MASTER_ADDR": _PARALLEL_ENV,
    "MASTER_PORT": _PARALLEL_ENV,
    "RANK": _PARALLEL_ENV,
    "LOCAL_RANK": _PARALLEL_ENV,
    "WORLD_SIZE": _PARALLEL_ENV,
    "CUDA_VISIBLE_DEVICES": _GPU_ENV,
    "HIP_VISIBLE_DEVICES": _GPU_ENV,
    "ROCR_VISIBLE_DEVICES": _GPU_ENV,
    "VLLM_MODEL_REDIRECT_PATH": "the model is spec.model.uri; this maps it to another folder",
    "VLLM_USE_MODELSCOPE": "the model is spec.model.uri; this downloads it from ModelScope instead",
    "VLLM_SERVER_DEV_MODE": "it serves vLLM's development routes (/collective_rpc, /sleep, ...), unauthenticated",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "it lets API clients load adapters from any path or Hub repository",
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "it lets the engine's processes unpickle what they receive",
    "VLLM_LOGGING_CONFIG_PATH": "a Python logging config from a file can build arbitrary objects (code)",
    "VLLM_RUST_FRONTEND_PATH": _NATIVE_FROM_PATH,
    "VLLM_NCCL_SO_PATH": _NATIVE_FROM_PATH,
    "VLLM_CUDART_SO_PATH": _NATIVE_FROM_PATH,
    "VLLM_CUDA_COMPATIBILITY_PATH": _NATIVE_FROM_PATH,
    "CUDA_HOME": _NATIVE_FROM_PATH,
    "TRITON_PTXAS_PATH": _NATIVE_FROM_PATH,
    "TRITON_CUOBJDUMP_PATH": _NATIVE_FROM_PATH,
    "TRITON_NVDISASM_PATH": _NATIVE_FROM_PATH,
    "TRITON_CACHE_DIR": "compiled kernels are loaded from it: code from a path",
    "TORCHINDUCTOR_CACHE_DIR": "compiled code is loaded from it: code from a path",
    "PYTHONPATH": _NATIVE_FROM_PATH,
    "PYTHONHOME": _NATIVE_FROM_PATH,
    "PYTHONSTARTUP": _NATIVE_FROM_PATH,
    "PYTHONUSERBASE": _NATIVE_FROM_PATH,
    "PYTHONPLATLIBDIR": _NATIVE_FROM_PATH,
}
# name prefix -> why: the dynamic loader's variables, and the NVIDIA container runtime's, which
# can hand the container every GPU of the node (NVIDIA_VISIBLE_DEVICES=all)
REFUSED_ENV_PREFIXES: dict[str, str] = {
    "LD_": _NATIVE_FROM_PATH,
    "NVIDIA_": "the NVIDIA container runtime reads it (NVIDIA_VISIBLE_DEVICES=all exposes every GPU of the node)",
}
# credentials: only from a Secret (valueFrom or spec.model.credentialsSecretRef), never a literal
SECRET_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "S3_SECRET_ACCESS_KEY",
)


def env_refusal(name: str) -> str | None:
    """Why an engine.env name is refused, or None."""
    if name in REFUSED_ENV:
        return REFUSED_ENV[name]
    for prefix, reason in REFUSED_ENV_PREFIXES.items():
        if name.startswith(prefix):
            return reason
    return None


def env_problems(env: Iterable[tuple[str, bool]]) -> list[str]:
    """Problems with (name, has a literal value) pairs, each naming the variable."""
    problems = []
    for index, (name, literal) in enumerate(env):
        reason = env_refusal(name)
        if reason:
            problems.append(f"spec.engine.env[{index}]: {name} is refused: {reason}")
        elif literal and name in SECRET_ENV:
            problems.append(
                f"spec.engine.env[{index}]: {name} is a credential: take it from a Secret "
                "(valueFrom.secretKeyRef or spec.model.credentialsSecretRef), never a literal value"
            )
    return problems


# --------------------------------------------------------------------------- parsing, as vLLM does


@dataclass(frozen=True)
class Token:
    """One extraArgs entry as vLLM's parser reads it."""

    index: int
    text: str
    is_option: bool  # starts with '-': an option to argparse (Kiban refuses a negative value on its own)
    key: str  # option key as argparse sees it ('' for values): normalised, before '=' and '.'
    inline: bool  # carries its value (`--x=y`, `-O3`)
    dotted: bool  # `--x.field` / `--x.field=v`: a JSON field of --x; vLLM takes the next argument as its value


def read_token(index: int, text: str) -> Token:
    if not text.startswith("-"):
        return Token(index, text, False, "", False, False)
    if text.startswith("--"):
        key = text.split("=", 1)[0]
        base = key.split(".", 1)[0]
        return Token(index, text, True, base.replace("_", "-"), "=" in text, "." in key)
    if text.startswith(OPTIMIZATION_LEVEL_SHORT):
        return Token(index, text, True, OPTIMIZATION_LEVEL_SHORT, len(text) > 2, False)
    key = text.split("=", 1)[0]
    return Token(index, text, True, key.split(".", 1)[0], "=" in text, "." in key)


def _token_problem(token: Token) -> str | None:
    """Whether one option, on its own, is a flag vllm serve has and Kiban lets through."""
    where = f"spec.engine.extraArgs[{token.index}]"
    if not token.is_option:
        return None
    if token.key in REFUSED_OPTIONS:
        return f"{where}: {token.text!r}: {refusal_message(token.key)}"
    if token.key in KNOWN_OPTIONS:
        return None
    return f"{where}: {token.text!r}: {unknown_option_detail(token.text, token.key)}"


NEGATIVE_VALUE_HINT = "a value starting with '-' must go inline, e.g. --seed=-1"
END_OF_OPTIONS_HINT = "'--' ends vLLM's options: every later argument would be a stray positional"
ATTACHED_VALUE_HINT = "vLLM reads it as {short} with the rest as its value, and {short} is refused (see its own message)"
ABBREVIATION_HINT = "vLLM would expand this abbreviation to {flag}, which is refused (write options in full)"
UNKNOWN_HINT = (f"not an option of vllm serve {VLLM_VERSION} spelt in full (abbreviations are refused: "
                "they break when a later vLLM adds a flag with the same prefix)")


def unknown_option_detail(text: str, key: str) -> str:
    """Why an option-looking argument is not one Kiban lets through (the CRD's message, word for word)."""
    if len(text) > 1 and text[1] in "0123456789.":
        return NEGATIVE_VALUE_HINT
    if key == "--":
        return END_OF_OPTIONS_HINT
    if not text.startswith("--") and len(text) > 2 and text[:2] in REFUSED_OPTIONS:
        return ATTACHED_VALUE_HINT.format(short=text[:2])
    refused = [o for o in REFUSED_KEYS if o.startswith(key)] if len(key) > 1 else []
    if refused:
        return ABBREVIATION_HINT.format(flag=refused[0])
    return UNKNOWN_HINT


def _arity(token: Token) -> str:
    return arity_of(token.key)


NO_JSON_FIELDS = "{key} takes no value, so it has no JSON fields"
TAKES_NO_VALUE = "{key} takes no value"
DOTTED_NEEDS_VALUE = ("a dotted option takes the next argument as its value: give one that does not start "
                      "with '-', or write it inline with '='")
LEVEL_NEEDS_VALUE = "-O needs a level 0-3 after it (or write -O3)"
NEEDS_VALUE = "{key} needs a value (write {key}=VALUE when the value starts with '-')"
STRAY_VALUE = "a value no option takes: vllm serve would stop with 'unrecognized arguments'"


def _option_arity_problem(token: Token, nxt: Token | None) -> str | None:
    arity = _arity(token)
    if token.dotted and arity == "none":
        return NO_JSON_FIELDS.format(key=token.key)
    if token.inline and not token.dotted and arity == "none":
        return TAKES_NO_VALUE.format(key=token.key)
    if token.dotted and not token.inline and (nxt is None or nxt.is_option):
        return DOTTED_NEEDS_VALUE
    if token.key == OPTIMIZATION_LEVEL_SHORT and not token.inline and (
            nxt is None or nxt.text not in ("0", "1", "2", "3")):
        return LEVEL_NEEDS_VALUE
    if not token.inline and not token.dotted and arity in ("one", "many") and (nxt is None or nxt.is_option):
        return NEEDS_VALUE.format(key=token.key)
    return None


def _value_taken(tokens: Sequence[Token], i: int) -> bool:
    """Whether the value at i is taken by the nearest option before it, as argparse would."""
    owner = next((tokens[j] for j in range(i - 1, -1, -1) if tokens[j].is_option), None)
    if owner is None:
        return False
    adjacent = i == owner.index + 1
    if owner.dotted and not owner.inline:
        return adjacent
    if owner.inline:
        return False
    arity = _arity(owner)
    if arity == "none":
        return False
    if arity in ("one", "optional"):
        return adjacent
    return True


def arity_problems(tokens: Sequence[Token]) -> list[str]:
    """Values without an option to take them, options missing their value, switches given one."""
    problems: list[str] = []
    for i, token in enumerate(tokens):
        where = f"spec.engine.extraArgs[{i}] ({token.text!r})"
        if token.is_option:
            problem = _option_arity_problem(token, tokens[i + 1] if i + 1 < len(tokens) else None)
        else:
            problem = None if _value_taken(tokens, i) else STRAY_VALUE
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _at_index(problem: str, indexed: dict[int, str]) -> bool:
    return any(problem.startswith(f"spec.engine.extraArgs[{i}]") for i in indexed)


def extra_args_problems(args: Sequence[str], *, trust_remote_code: bool) -> list[str]:
    """Every reason the API server (the CRD's CEL) refuses these extraArgs, as messages naming the flag."""
    tokens = [read_token(i, a) for i, a in enumerate(args)]
    token_problems = {t.index: p for t in tokens if (p := _token_problem(t))}
    problems = list(token_problems.values())
    # an argument already refused on its own is not also reported for its arity (the CRD reports both)
    problems += [p for i, p in enumerate(arity_problems(tokens)) if not _at_index(p, token_problems)]
    if not trust_remote_code:
        for t in tokens:
            if t.is_option and t.key == TRUST_REMOTE_CODE:
                problems.append(f"spec.engine.extraArgs[{t.index}]: {t.text!r}: {TRUST_REMOTE_CODE} is refused "
                                f"while spec.model.trustRemoteCode is false: {TRUST_REMOTE_CODE_REASON}")
    return problems
