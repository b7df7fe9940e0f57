"""The generated CRD: structural, described, defaulted, with CEL rules, columns and subresources, and checked in."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pytest
import yaml

from kiban.api.cli import check_command, generate_command
from kiban.api.crd import CRD_FILENAME, SchemaTranslationError, build_crd, render_crd, to_structural
from kiban.api.v1alpha1 import FoundationModel, KibanModel

REPO = Path(__file__).resolve().parents[3]
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "nullable", "const"}


def version() -> dict:
    (only,) = build_crd()["spec"]["versions"]
    return only


def schema() -> dict:
    return version()["schema"]["openAPIV3Schema"]


def walk(node: dict, path: str = ""):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_names_scope_and_version():
    crd = build_crd()
    assert crd["metadata"]["name"] == "foundationmodels.kiban.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("FoundationModel", "foundationmodels", ["fm"])
    assert crd["spec"]["scope"] == "Namespaced" and crd["spec"]["group"] == "kiban.dev"
    assert version()["name"] == "v1alpha1" and version()["served"] and version()["storage"]


def test_schema_is_structural():
    for path, node in walk(schema()):
        assert not FORBIDDEN_KEYS & node.keys(), path
        assert not isinstance(node.get("additionalProperties"), bool), path
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert typed, f"{path} has no type"
        if node.get("exclusiveMinimum") is not None:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_every_spec_and_status_field_is_described():
    for path, node in walk(schema()):
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description (kubectl explain would be empty)"


def test_int_or_string_parallelism_defaults_to_auto():
    accelerator = schema()["properties"]["spec"]["properties"]["accelerator"]["properties"]
    for field in ("gpusPerReplica", "tensorParallelSize"):
        assert accelerator[field]["x-kubernetes-int-or-string"] is True
        assert accelerator[field]["default"] == "auto"


def test_no_field_preserves_unknown_fields():
    """Affinity is typed too: whatever the CRD accepts, the Pod API accepts (no pass-through)."""
    preserved = [p for p, n in walk(schema()) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == []
    affinity = schema()["properties"]["spec"]["properties"]["scheduling"]["properties"]["affinity"]
    assert set(affinity["properties"]) == {"nodeAffinity", "podAffinity", "podAntiAffinity"}


def _field_rules() -> set[str]:
    """CEL placed on a field's own schema node (list items, maps), whose Python side is a
    PythonCheck or the field's type."""
    out = set()
    for model in _all_models():
        for field in model.model_fields.values():
            for holder in (field, *field.metadata, *(getattr(a, "__metadata__", ()) for a in _args(field.annotation))):
                for meta in (holder if isinstance(holder, tuple) else (holder,)):
                    extra = getattr(meta, "json_schema_extra", None)
                    if isinstance(extra, dict):
                        out |= {r["rule"] for r in extra.get("x-kubernetes-validations", [])}
    return out


def _args(annotation):
    import typing

    for arg in typing.get_args(annotation):
        yield arg
        yield from _args(arg)


def test_every_python_rule_is_in_the_schema():
    rules_in_schema = {
        r["rule"] for _, node in walk(schema()) for r in node.get("x-kubernetes-validations", [])
    }
    rules_in_models = {r.rule for model in _all_models() for r in model.cel_rules}
    field_rules = _field_rules()
    assert rules_in_models and field_rules
    assert rules_in_models | field_rules == rules_in_schema
    for _, node in walk(schema()):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"]


def _all_models():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    return set(subclasses(KibanModel))


def apply_defaults(node: dict, value):
    """Structural defaulting as the API server does it: fill absent fields that have a default."""
    if isinstance(value, dict) and "properties" in node:
        for name, child in node["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and "items" in node:
        value = [apply_defaults(node["items"], v) for v in value]
    return value


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_schema_defaults_equal_the_model_defaults(example):
    body = yaml.safe_load(example.read_text())
    server_side = apply_defaults(schema()["properties"]["spec"], copy.deepcopy(body["spec"]))
    python_side = FoundationModel.from_object(body).spec.model_dump(mode="json", exclude_none=True)
    assert server_side == python_side


def test_printer_columns():
    columns = {c["name"]: c for c in version()["additionalPrinterColumns"]}
    assert list(columns)[:5] == ["Model", "GPUs", "Replicas", "Ready", "TTFT-SLO"] and "Age" in columns
    assert columns["GPUs"]["jsonPath"] == ".status.resolved.gpusPerReplica"
    assert columns["TTFT-SLO"]["jsonPath"] == ".spec.scaling.slo.ttftP95Ms"


def test_status_and_scale_subresources():
    assert version()["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.scaling.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    status = schema()["properties"]["status"]
    assert all("default" not in node for _, node in walk(status))
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_rendering_is_deterministic_and_checked_in():
    assert render_crd() == render_crd()
    checked_in = (REPO / "crds" / CRD_FILENAME).read_text()
    assert checked_in == render_crd(), "crds/ is stale: run `make crds`"


def test_check_command_reports_a_stale_crd(tmp_path, capsys):
    args = argparse.Namespace(output_dir=tmp_path)
    assert check_command(args) == 1  # missing
    assert generate_command(args) == 0
    assert check_command(args) == 0
    path = tmp_path / CRD_FILENAME
    path.write_text(path.read_text().replace("ttftP95Ms", "ttftP95"))
    capsys.readouterr()
    assert check_command(args) == 1
    assert "+" in capsys.readouterr().out


def test_unions_without_structural_form_are_refused():
    with pytest.raises(SchemaTranslationError):
        to_structural({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, {})
