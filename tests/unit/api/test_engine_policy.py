"""extraArgs and env refusal, checked against Python's own argparse reading the arguments.

The oracle is argparse itself (allow_abbrev on, as vLLM's FlexibleArgumentParser leaves it),
built from the option table, behind a small re-statement of what vLLM 0.33's parse_args does
first (read in vllm/utils/argparse_utils.py: '_' for '-' in a long option's name before its
first '.', `--x.field v` folded into --x's JSON value, -O3 for --optimization-level 3). The
property: whatever Kiban accepts, argparse parses without error and sets no refused flag; what
Kiban refuses that argparse would take is one of the three documented strictnesses.
"""

from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiban.api import engine_policy as policy
from kiban.api.vllm_flags import ARITY, CANONICAL

REFUSED = set(policy.REFUSED_OPTIONS)


class ArgparseSaysNo(Exception):
    pass


class Oracle(argparse.ArgumentParser):
    def error(self, message):  # noqa: D401 - argparse's hook
        raise ArgparseSaysNo(message)


def oracle_parser() -> Oracle:
    parser = Oracle(prog="vllm serve", allow_abbrev=True, add_help=False)
    parser.add_argument("model_tag", nargs="?")
    for option, arity in ARITY.items():
        kwargs = {"none": {"action": "store_true"}, "one": {}, "optional": {"nargs": "?", "const": True},
                  "many": {"nargs": "+"}}[arity]
        parser.add_argument(option, dest=option, **kwargs)
    return parser


PARSER = oracle_parser()


def vllm_preprocess(args: list[str]) -> list[str]:
    """vLLM 0.33's rewriting before argparse (FlexibleArgumentParser.parse_args), restated."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            head, dot, tail = name.partition(".")
            out.append(head.replace("_", "-") + dot + tail + eq + value)
        elif arg.startswith("-O") and arg != "-O":
            out += ["--optimization-level", arg[3:] if arg[2:3] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            out.append("--optimization-level")
        else:
            out.append(arg)
    folded, dicts, skip = [], {}, set()
    for i, arg in enumerate(out):
        if i in skip:
            continue
        if arg.startswith("-") and "." in arg:
            name, eq, value = arg.partition("=")
            if eq and "." not in name:
                folded.append(arg)
                continue
            if not eq:
                if i + 1 >= len(out):
                    raise ArgparseSaysNo("vLLM indexes past the end for a dotted option without a value")
                value = out[i + 1]
                skip.add(i + 1)
            key, *_ = name.split(".")
            dicts.setdefault(key, {})
            continue
        folded.append(arg)
    for key, value in dicts.items():
        folded += [key, json.dumps(value)]
    return folded


def argparse_reading(args: list[str]) -> tuple[bool, set[str]]:
    """(argparse accepts, option strings it set), after vLLM's rewriting."""
    try:
        namespace = PARSER.parse_args(["some/model", *vllm_preprocess(args)])
    except ArgparseSaysNo:
        return False, set()
    used = {dest for dest, value in vars(namespace).items()
            if dest != "model_tag" and value not in (None, False)}
    return True, used


def documented_strictness(args: list[str]) -> bool:
    """Kiban refuses these though argparse would take them (docs/security.md says why)."""
    for i, arg in enumerate(args):
        token = policy.read_token(0, arg)
        if not token.is_option:
            continue
        before = policy.read_token(0, args[i - 1]) if i else None
        if before is not None and before.dotted and not before.inline:
            return True  # a value starting with '-' given on its own, to a dotted option
        if arg == "--" or (len(arg) > 1 and arg[1] in "0123456789.") or arg == "-":
            return True  # end of options; a value starting with '-' given on its own
        if token.key not in policy.KNOWN_OPTIONS:
            return True  # an abbreviation (or an attached short value like -qfp8)
    return False


# ----------------------------------------------------------------------------- table-driven cases


@pytest.mark.parametrize(("args", "refused_because"), [
    (["--enable-prefix-caching"], None),
    (["--kv-cache-dtype", "fp8", "--max-num-batched-tokens=8192"], None),
    (["--compilation-config.level", "3", "--compilation-config.mode=2"], None),
    (["--cudagraph-capture-sizes", "1", "2", "4", "--enforce-eager"], None),
    (["--no-enable-prefix-caching", "--disable-log-requests"], None),
    (["--seed=-1", "-O3", "-O", "2"], None),
    (["--api_key=x"], "--api-key is refused"),
    (["--api-ke=x"], "expand this abbreviation to --api-key"),
    (["--served_model_name", "x"], "--served-model-name is refused"),
    (["--port", "9000"], "--port is refused"),
    (["-tp", "4"], "-tp (--tensor-parallel-size) is refused"),
    (["-qfp8"], "vLLM reads it as -q"),
    (["--disable-lora"], "--disable-lora (--enable-lora) is refused"),
    (["--allowed-local-media-path=/"], "--allowed-local-media-path is refused"),
    (["--tool-parser-plugin", "/models/x/evil.py"], "--tool-parser-plugin is refused"),
    (["--config", "/models/x/args.yaml"], "--config is refused"),
    (["--help"], "--help is refused"),
    (["--enable-turbo-mode"], "not an option of vllm serve"),
    (["--enforce-eager", "true"], "a value no option takes"),
    (["--enforce-eager=true"], "takes no value"),
    (["--enable-prefix-caching.x=1"], "no JSON fields"),
    (["--kv-cache-dtype"], "needs a value"),
    (["--compilation-config.level", "--enforce-eager"], "dotted option takes the next argument"),
    (["--seed", "-1"], "must go inline"),
    (["--"], "ends vLLM's options"),
    (["fp8"], "a value no option takes"),
    (["-O", "x"], "-O needs a level"),
])
def test_extra_args(args, refused_because):
    problems = policy.extra_args_problems(args, trust_remote_code=False)
    if refused_because is None:
        assert problems == []
        assert argparse_reading(args)[0]
    else:
        assert problems and any(refused_because in p for p in problems), problems
        assert all(p.startswith("spec.engine.extraArgs") for p in problems)


def test_trust_remote_code_follows_the_spec_field():
    assert policy.extra_args_problems(["--trust-remote-code"], trust_remote_code=True) == []
    (problem,) = policy.extra_args_problems(["--trust_remote_code"], trust_remote_code=False)
    assert "spec.model.trustRemoteCode is false" in problem
    assert "--no-trust-remote-code (--trust-remote-code) is refused" in policy.extra_args_problems(
        ["--no-trust-remote-code"], trust_remote_code=True)[0]


@pytest.mark.parametrize(("name", "literal", "refused_because"), [
    ("VLLM_LOGGING_LEVEL", True, None),
    ("HF_TOKEN", False, None),
    ("HF_TOKEN", True, "is a credential"),
    ("VLLM_SERVER_DEV_MODE", True, "development routes"),
    ("VLLM_API_KEY", False, "spec.apiKeySecretRef"),
    ("HF_HOME", True, "the operator sets it"),
    ("LD_PRELOAD", True, "loads code from a path"),
    ("NVIDIA_VISIBLE_DEVICES", True, "every GPU of the node"),
    ("PYTHONPATH", True, "loads code from a path"),
    ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", True, "load adapters"),
])
def test_env(name, literal, refused_because):
    problems = policy.env_problems([(name, literal)])
    if refused_because is None:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith("spec.engine.env[0]: " + name) and refused_because in problem


# ----------------------------------------------------------------------------- the argparse oracle

_known = sorted(ARITY)
_values = st.sampled_from(["1", "fp8", "auto", "-1", "-1.5", "x y", "{\"a\": 1}", "0", "3", "=", "."])


def _abbreviation(option: str, cut: int) -> str:
    return option[: max(3 if option.startswith("--") else 2, len(option) - cut)]


_tokens = st.one_of(
    st.sampled_from(_known),
    st.sampled_from(_known).map(lambda o: o.replace("-", "_").replace("__", "--", 1) if o.startswith("--") else o),
    st.tuples(st.sampled_from(_known), st.integers(1, 8)).map(lambda t: _abbreviation(*t)),
    st.tuples(st.sampled_from(_known), _values).map(lambda t: f"{t[0]}={t[1]}"),
    st.sampled_from(["--compilation-config.level", "--speculative-config.method", "--enforce-eager.x",
                     "--compilation-config.level=3", "-cc.level=3"]),
    _values,
    st.sampled_from(["--", "-", "-O", "-O3", "-O=2", "-qfp8", "-tp", "-t", "-d", "--help", "-h", "--x"]),
)


@settings(max_examples=1000, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_tokens, max_size=6), st.booleans())
def test_whatever_kiban_accepts_argparse_parses_without_a_refused_flag(args, trust):
    problems = policy.extra_args_problems(args, trust_remote_code=trust)
    parses, used = argparse_reading(args)
    sets_refused = bool(used & REFUSED) or (not trust and bool(used & {"--trust-remote-code"}))
    if not problems:
        assert parses, f"Kiban accepts {args} but vLLM's parser would stop"
        assert not sets_refused, f"Kiban accepts {args} but vLLM would set {used & (REFUSED | {'--trust-remote-code'})}"
    elif parses and not sets_refused:
        assert documented_strictness(args), f"Kiban refuses {args}, which vLLM reads fine: {problems}"
