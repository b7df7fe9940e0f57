"""Text in README and docs that comes from running the operator's own code, so it cannot drift.

A generated block sits between two markers in a Markdown file:

    <!-- generated: scaling-reason (make docs) -->
    ...
    <!-- /generated -->

`make docs` rewrites every block from `snippets()`; `python -m kiban_dev.docsnippets --check`
(and tests/unit/test_docsnippets.py, so `make test`) fails naming the file and block when one
differs, so a change to a reason string or a status field shows up in the docs' diff.

The scenario is the README's example model (examples/model.yaml) on its accelerator, one
replica running, at a fixed observed load: the autoscaler's pure steps (kiban.autoscale.
model_pass: spec → policy configs, decide, status.scaling, conditions) produce the text.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from kiban.api import engine_policy
from kiban.api.v1alpha1 import FoundationModel
from kiban.autoscale import model_pass
from kiban.autoscale.collector import Collected
from kiban.autoscale.policy import Observation
from kiban.clock import rfc3339
from kiban.config import load_config
from kiban.sizing import resolve_sizing

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = (REPO / "README.md", REPO / "docs" / "autoscaling.md", REPO / "docs" / "security.md")
EXAMPLE_MODEL = REPO / "examples" / "model.yaml"
BLOCK = re.compile(r"^(?P<indent>[ ]*)(?P<open><!-- generated: (?P<name>[a-z0-9-]+) \(make docs\) -->\n)"
                   r"(?P<body>.*?)^(?P=indent)(?P<close><!-- /generated -->)", re.DOTALL | re.MULTILINE)
# the scenario: what Prometheus showed for the example model (60 s rate window, one engine)
SCENARIO = {"arrival_rate_rps": 2.1, "mean_prompt_tokens": 512.0, "mean_output_tokens": 128.0,
            "running": 3.0, "waiting": 0.0}
NOW_S = 1_764_614_400.0  # 2025-12-01T18:40:00Z: a fixed clock, so lastScaleTime is stable


def example_decision():
    """The autoscaler's decision, status.scaling and conditions for the scenario."""
    body = yaml.safe_load(EXAMPLE_MODEL.read_text(encoding="utf-8"))
    body["metadata"] = {**body["metadata"], "namespace": "models", "generation": 1}
    model = FoundationModel.from_object(body)
    config = load_config({})
    sizing = resolve_sizing(model.spec, config.profile(model.spec.accelerator.profile))
    configs = model_pass.scaling_configs(model, sizing.gpus_per_replica)
    current = model.spec.scaling.desired_replicas()
    observation = Observation(time_s=NOW_S, metrics_available=True, rate_window_s=60.0, current_replicas=current,
                              ready_replicas=current, **SCENARIO)
    decision, _ = model_pass.decide_strictest(observation, configs, model_pass.seed_state(NOW_S, current),
                                              model_pass.engine_profile_for(model))
    collected = Collected(observation, engines=current)
    status = model_pass.scaling_status(decision, collected, rfc3339(NOW_S))
    conditions = model_pass.autoscaler_conditions(decision, collected, generation=1)
    return decision, status, conditions


def _grouped(table: dict[str, str]) -> dict[str, list[str]]:
    by_reason: dict[str, list[str]] = {}
    for name, reason in table.items():
        by_reason.setdefault(reason, []).append(name)
    return by_reason


def refused_flags_table() -> str:
    """engine_policy's refused flags, grouped by reason, with every other spelling argparse accepts."""
    rows = ["| refused in `spec.engine.extraArgs` | also refused as | why |", "|---|---|---|"]
    for category, table in (("owned", engine_policy.OWNED_FLAGS), ("widening", engine_policy.WIDENING_FLAGS)):
        for reason, flags in _grouped(table).items():
            others = sorted(o for o, r in engine_policy.REFUSED_OPTIONS.items() if r.long_flag in flags and o not in flags)
            rows.append(f"| {', '.join(f'`{f}`' for f in sorted(flags))} | {', '.join(f'`{o}`' for o in others) or '–'} "
                        f"| {category}: {reason} |")
    rows.append(f"| `{engine_policy.TRUST_REMOTE_CODE}` unless `spec.model.trustRemoteCode: true` | `--trust_remote_code` "
                f"| widening: {engine_policy.TRUST_REMOTE_CODE_REASON} |")
    return "\n".join(rows) + "\n"


def refused_env_table() -> str:
    rows = ["| refused in `spec.engine.env` | why |", "|---|---|"]
    for reason, names in _grouped(engine_policy.REFUSED_ENV).items():
        rows.append(f"| {', '.join(f'`{n}`' for n in sorted(names))} | {reason} |")
    for prefix, reason in engine_policy.REFUSED_ENV_PREFIXES.items():
        rows.append(f"| every name starting `{prefix}` | {reason} |")
    rows.append(f"| {', '.join(f'`{n}`' for n in engine_policy.SECRET_ENV)} with a literal `value` | a credential: "
                "only from a Secret (`valueFrom.secretKeyRef`, `spec.model.credentialsSecretRef`) |")
    return "\n".join(rows) + "\n"


def snippets() -> dict[str, str]:
    """Block name -> its Markdown body (ending in a newline)."""
    decision, status, conditions = example_decision()
    status_yaml = yaml.safe_dump({"status": {"scaling": {k: v for k, v in status.items() if v is not None},
                                             "conditions": conditions}},
                                 sort_keys=False, allow_unicode=True, width=120)
    return {
        "scaling-reason": f"```text\n{decision.reason}\n```\n",
        "scaling-status": f"```yaml\n{status_yaml}```\n",
        "refused-flags": refused_flags_table(),
        "refused-env": refused_env_table(),
    }


def render(text: str, blocks: dict[str, str]) -> str:
    """`text` with every generated block's body replaced, indented like its markers (a block
    inside a list item stays in the item); an unknown block name is an error."""
    def body(match: re.Match) -> str:
        name, indent = match.group("name"), match.group("indent")
        if name not in blocks:
            raise KeyError(f"no generated block named {name!r} (known: {', '.join(sorted(blocks))})")
        lines = "".join(indent + line if line.strip() else line for line in blocks[name].splitlines(True))
        return indent + match.group("open") + lines + indent + match.group("close")

    return BLOCK.sub(body, text)


def stale(paths=DOCUMENTS, blocks: dict[str, str] | None = None) -> list[str]:
    """The documents whose generated blocks differ from what the code produces now."""
    blocks = snippets() if blocks is None else blocks
    return [str(p.relative_to(REPO)) for p in paths
            if render(p.read_text(encoding="utf-8"), blocks) != p.read_text(encoding="utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a document is stale; write nothing")
    args = parser.parse_args(argv)
    blocks = snippets()
    if args.check:
        out_of_date = stale(blocks=blocks)
        for name in out_of_date:
            print(f"{name}: generated blocks are stale; run `make docs`", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        path.write_text(render(text, blocks), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
