"""engine_policy's rules as CEL for the CRD, generated from the same tables (so the two cannot drift).

CEL in a CRD has no variables, so each rule spells out how vLLM reads one argument t:
  KEY(t)  t before its first '=' (split('=', 2)[0]);   BASE(t)  KEY before its first '.';
  OPT(t)  BASE with '_' read as '-' (long options), '-O' for vLLM's -O shorthand, else BASE;
  INL(t)  t carries its value ('=', or -O3);   DOT(t)  KEY has a '.' (a JSON field of the option).
Option tables are map or list literals; the loops run over the (at most 64) arguments only, so
every rule stays far inside the API server's cost budget (the CRD is applied to a real API
server by the integration tests, which refuses a CRD whose rules cost too much).
Needs Kubernetes 1.29 or later (CEL strings library v2, lists library).
"""

from __future__ import annotations

from kiban.api.engine_policy import (
    ABBREVIATION_HINT,
    ATTACHED_VALUE_HINT,
    DOTTED_NEEDS_VALUE,
    END_OF_OPTIONS_HINT,
    KNOWN_OPTIONS,
    LEVEL_NEEDS_VALUE,
    MANY_VALUES,
    MAX_EXTRA_ARGS,
    NEGATIVE_VALUE_HINT,
    OPTIMIZATION_LEVEL_SHORT,
    OPTIONAL_VALUE,
    REFUSAL_REASONS,
    REFUSED_ALIASES,
    REFUSED_ENV,
    REFUSED_ENV_PREFIXES,
    REFUSED_KEYS,
    REFUSED_OPTIONS,
    SECRET_ENV,
    SWITCH_PREFIXES,
    SWITCHES,
    TRUST_REMOTE_CODE,
    TRUST_REMOTE_CODE_REASON,
    UNKNOWN_HINT,
    VALUE_TAKING_SWITCH_LOOKALIKES,
)

ARITY_MESSAGE = (
    "each option needs the values it takes: switches take none (and have no JSON fields), other options one "
    "(write --flag=VALUE when it starts with '-'), a dotted --flag.field the next argument, -O a level 0-3; "
    "a value no option takes makes vllm serve stop"
)


def quote(text: str) -> str:
    """A CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _list(items) -> str:
    return "[" + ", ".join(quote(i) for i in items) + "]"


def _set(items) -> str:
    """A map literal used as a set: `x in {...}` is a constant-cost lookup."""
    return "{" + ", ".join(f"{quote(i)}: true" for i in sorted(items)) + "}"


KNOWN = _set(KNOWN_OPTIONS)
REFUSED_REASON_INDEX = "{" + ", ".join(
    f"{quote(o)}: {REFUSAL_REASONS.index(REFUSED_OPTIONS[o].reason)}" for o in REFUSED_KEYS) + "}"
REASONS = _list(REFUSAL_REASONS)
ALIASES = "{" + ", ".join(f"{quote(o)}: {quote(f)}" for o, f in sorted(REFUSED_ALIASES.items())) + "}"
INDICES = "[" + ", ".join(str(i) for i in range(MAX_EXTRA_ARGS)) + "]"
SHORT_O = quote(OPTIMIZATION_LEVEL_SHORT)


def key(t: str) -> str:
    return f"{t}.split('=', 2)[0]"


def base(t: str) -> str:
    return f"{key(t)}.split('.', 2)[0]"


def opt(t: str) -> str:
    return f"({t}.startsWith('--') ? {base(t)}.replace('_', '-') : ({t}.startsWith({SHORT_O}) ? {SHORT_O} : {base(t)}))"


def inline(t: str) -> str:
    return f"({t}.startsWith({SHORT_O}) ? {t}.size() > 2 : {t}.contains('='))"


def dotted(t: str) -> str:
    return f"(!{t}.startsWith({SHORT_O}) && {key(t)}.contains('.'))"


def is_switch(o: str) -> str:
    """engine_policy.arity_of(o) == 'none', for an OPT expression o."""
    prefixes = " || ".join(f"{o}.startsWith({quote(p)})" for p in SWITCH_PREFIXES)
    return f"({o} in {_set(SWITCHES)} || (({prefixes}) && !({o} in {_list(VALUE_TAKING_SWITCH_LOOKALIKES)})))"


def refusal(o: str) -> str:
    """engine_policy.refusal_message(o) for a refused OPT expression o."""
    return (f"{o} + ({o} in {ALIASES} ? ' (' + {ALIASES}[{o}] + ')' : '') + ' is refused: ' + "
            f"{REASONS}[{REFUSED_REASON_INDEX}[{o}]]")


def _rule(rule: str, message: str, message_expression: str | None, reason: str,
          field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message, "reason": reason}
    if message_expression:
        out["messageExpression"] = message_expression
    if field_path:
        out["fieldPath"] = field_path
    return out


def let(value: str, name: str, body: str) -> str:
    """`body` with `name` bound to `value`, evaluated once: CEL has no variables in CRD rules, and
    a one-element list's all() is the usual stand-in (the cost estimate counts value once)."""
    return f"[{value}].all({name}, {body})"


def let_string(value: str, name: str, body: str) -> str:
    """let() for a string-valued body (messageExpressions)."""
    return f"[{value}].map({name}, {body})[0]"


# ----------------------------------------------------------------------------- one argument


def known_option_rule() -> dict[str, str]:
    """Items of extraArgs: an option must be one vllm serve has, spelt in full."""
    attached = "self.substring(0, 2)"
    parts = ATTACHED_VALUE_HINT.split("{short}")
    abbreviation = ABBREVIATION_HINT.split("{flag}")
    message = let_string(opt("self"), "o", (
        f"{quote(chr(39))} + self + {quote(chr(39) + ': ')} + ("
        f"self.size() > 1 && self.substring(1, 2).matches('^[0-9.]$') ? {quote(NEGATIVE_VALUE_HINT)} : "
        f"o == '--' ? {quote(END_OF_OPTIONS_HINT)} : "
        f"(!self.startsWith('--') && self.size() > 2 && {attached} in {REFUSED_REASON_INDEX}) ? "
        f"{quote(parts[0])} + {attached} + {quote(parts[1])} + {attached} + {quote(parts[2])} : "
        f"o.size() > 1 && {_list(REFUSED_KEYS)}.exists(f, f.startsWith(o)) ? "
        f"{quote(abbreviation[0])} + {_list(REFUSED_KEYS)}.filter(f, f.startsWith(o))[0] + {quote(abbreviation[1])} : "
        f"{quote(UNKNOWN_HINT)})"
    ))
    return _rule(
        f"!self.startsWith('-') || {opt('self')} in {KNOWN}",
        "spec.engine.extraArgs: not an option of vllm serve spelt in full",
        message, "FieldValueInvalid",
    )


def refused_option_rule() -> dict[str, str]:
    """Items of extraArgs: options the operator owns or that widen the engine are forbidden."""
    return _rule(
        f"!self.startsWith('-') || !({opt('self')} in {REFUSED_REASON_INDEX})",
        "spec.engine.extraArgs: an option the operator sets, or one that widens what the engine may do",
        let_string(opt("self"), "o", f"{quote(chr(39))} + self + {quote(chr(39) + ': ')} + {refusal('o')}"),
        "FieldValueForbidden",
    )


# ----------------------------------------------------------------------------- the whole list
# f[i]: args[i] is an option; o[i]: its OPT; n[i]: INL; d[i]: DOT; each computed once per rule.


def _with_columns(args: str, body: str, *, string: bool = False) -> str:
    bind = let_string if string else let
    return bind(f"{args}.map(t, t.startsWith('-'))", "f",
                bind(f"{args}.map(t, {opt('t')})", "o",
                     bind(f"{args}.map(t, {inline('t')})", "n",
                          bind(f"{args}.map(t, {dotted('t')})", "d", body))))


def _argument_ok(args: str, i: str) -> str:
    """engine_policy.arity_problems finds nothing at args[i] (inside _with_columns)."""
    nxt_bad = f"({i} + 1 >= size({args}) || f[{i} + 1])"
    level_bad = f"({i} + 1 >= size({args}) || !({args}[{i} + 1] in ['0', '1', '2', '3']))"
    option_ok = (
        f"({is_switch(f'o[{i}]')} ? (!d[{i}] && !n[{i}]) : !("
        f"(d[{i}] && !n[{i}] && {nxt_bad}) || "
        f"(o[{i}] == {SHORT_O} && !n[{i}] && {level_bad}) || "
        f"(!n[{i}] && !d[{i}] && !(o[{i}] in {_list(OPTIONAL_VALUE)}) && {nxt_bad})))"
    )
    p = f"{i} - 1"
    takes_adjacent = f"((d[{p}] && !n[{p}]) || (!n[{p}] && !{is_switch(f'o[{p}]')}))"
    # a run of values belongs to the nearest option before it, which must take many values
    chain = (f"({INDICES}.exists(j, j < {i} && f[j]) && "
             + let(f"{INDICES}.filter(j, j < {i} && f[j]).max()", "w",
                   f"!n[w] && !d[w] && o[w] in {_set(MANY_VALUES)}") + ")")
    value_ok = f"({i} > 0 && (f[{p}] ? {takes_adjacent} : {chain}))"
    return f"(f[{i}] ? {option_ok} : {value_ok})"


def arity_rule(args: str = "self") -> dict[str, str]:
    """On the extraArgs list: every value is taken by an option, every option that needs a value has one."""
    first = f"{INDICES}.filter(i, i < size({args}) && !{_argument_ok(args, 'i')})[0]"
    message = _with_columns(args, f"{quote(chr(39))} + {args}[{first}] + {quote(chr(39) + ': ')} + "
                                  f"{quote(ARITY_MESSAGE)}", string=True)
    return _rule(
        _with_columns(args, f"{INDICES}.all(i, i >= size({args}) || {_argument_ok(args, 'i')})"),
        "spec.engine.extraArgs: " + ARITY_MESSAGE,
        message, "FieldValueInvalid",
    )


def trust_remote_code_rule() -> dict[str, str]:
    """On FoundationModelSpec: --trust-remote-code only with spec.model.trustRemoteCode."""
    return _rule(
        (f"self.model.trustRemoteCode || !self.engine.extraArgs.exists(a, "
         f"a.startsWith('-') && {opt('a')} == {quote(TRUST_REMOTE_CODE)})"),
        (f"spec.engine.extraArgs: {TRUST_REMOTE_CODE} is refused while spec.model.trustRemoteCode "
         f"is false: {TRUST_REMOTE_CODE_REASON}"),
        None, "FieldValueForbidden", ".engine.extraArgs",
    )


# ----------------------------------------------------------------------------- env


def env_name_rule() -> dict[str, str]:
    """On EnvVar: names the operator sets, or that open the engine up, are forbidden."""
    reasons = sorted(set(REFUSED_ENV.values()) | set(REFUSED_ENV_PREFIXES.values()))
    index = "{" + ", ".join(f"{quote(n)}: {reasons.index(r)}" for n, r in sorted(REFUSED_ENV.items())) + "}"
    prefixes = " || ".join(f"self.name.startsWith({quote(p)})" for p in REFUSED_ENV_PREFIXES)
    prefix_reason = "".join(f"self.name.startsWith({quote(p)}) ? {reasons.index(r)} : "
                            for p, r in REFUSED_ENV_PREFIXES.items())
    return _rule(
        f"!(self.name in {index}) && !({prefixes})",
        "spec.engine.env: a variable the operator sets, or one that widens what the engine may do",
        (f"self.name + ' is refused: ' + {_list(reasons)}[self.name in {index} ? {index}[self.name] : "
         f"{prefix_reason}0]"),
        "FieldValueForbidden", ".name",
    )


def env_secret_rule() -> dict[str, str]:
    """On EnvVar: credentials only from a Secret, never a literal value."""
    return _rule(
        f"!(self.name in {_list(SECRET_ENV)}) || !has(self.value)",
        "spec.engine.env: a credential must come from a Secret (valueFrom.secretKeyRef), never a literal value",
        ("self.name + ' is a credential: take it from a Secret (valueFrom.secretKeyRef or "
         "spec.model.credentialsSecretRef), never a literal value'"),
        "FieldValueForbidden", ".value",
    )
