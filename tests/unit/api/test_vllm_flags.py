"""The generated vllm serve option table against the release's reference flag list."""

from __future__ import annotations

from pathlib import Path

from kiban.api import engine_policy
from kiban.api.vllm_flags import ARITY, CANONICAL

REFERENCE = Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "vllm-0.33-serve-flags.txt"


def reference_flags() -> set[str]:
    return {line.strip() for line in REFERENCE.read_text(encoding="utf-8").splitlines() if line.startswith("--")}


def test_the_long_flags_are_exactly_the_reference_list():
    reference = reference_flags()
    assert len(reference) > 300
    long_flags = {o for o in ARITY if o.startswith("--") and CANONICAL.get(o, o) == o}
    assert long_flags - {"--help"} == reference  # argparse's own --help is not in the list


def test_every_negated_form_belongs_to_a_switch_of_the_reference():
    reference = reference_flags()
    for option, flag in CANONICAL.items():
        assert flag in reference | {"--help"}, option
        if option.startswith("--no-"):
            assert ARITY[option] == ARITY[flag] == "none", option


def test_short_aliases_are_the_documented_ones():
    # vllm.md: -tp, -pp, -dp, -q; every alias maps to a long flag of the list
    shorts = {o: f for o, f in CANONICAL.items() if not o.startswith("--")}
    assert shorts["-tp"] == "--tensor-parallel-size" and shorts["-pp"] == "--pipeline-parallel-size"
    assert shorts["-dp"] == "--data-parallel-size" and shorts["-q"] == "--quantization"
    assert all(ARITY[o] == ARITY[f] for o, f in shorts.items() if f != "--help")


def test_arity_spot_checks_read_from_the_source():
    """A few the reference's own text pins down (vllm.md; vLLM's help strings)."""
    assert ARITY["--enable-prefix-caching"] == ARITY["--no-enable-prefix-caching"] == "none"
    assert ARITY["--disable-prefix-caching"] == "none"  # vLLM's EnableDisableAction inverse
    assert ARITY["--trust-remote-code"] == ARITY["--enforce-eager"] == "none"
    assert ARITY["--lora-modules"] == "many" and ARITY["--max-model-len"] == "one"
    assert ARITY["--middleware"] == "one"  # action=append: one value per occurrence


def test_the_cel_arity_formula_equals_the_table_for_every_option():
    """engine_policy.arity_of (what the CRD's CEL computes) is the generated arity everywhere."""
    assert {o: engine_policy.arity_of(o) for o in ARITY} == dict(ARITY)


def test_every_refused_flag_is_a_vllm_flag():
    assert set(engine_policy.OWNED_FLAGS) | set(engine_policy.WIDENING_FLAGS) <= set(ARITY)
    assert set(engine_policy.REFUSED_OPTIONS) <= set(ARITY)
    assert {"-tp", "-pp", "-dp", "-q", "-n", "-r", "--disable-lora", "--no-enable-lora"} <= set(
        engine_policy.REFUSED_OPTIONS)
