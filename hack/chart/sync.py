#!/usr/bin/env python3
"""Keep the Helm chart's generated parts in step with their sources.

  python hack/chart/sync.py          write them
  python hack/chart/sync.py --check  exit 1, listing each stale file, when the chart differs

Generated parts of charts/kiban:
  crds/*.yaml                    copies of crds/ (generated from the pydantic API by `make crds`)
  files/dashboards/*.json        kiban_dev.chartgen.dashboards
  files/rules/kiban.rules.yaml   kiban_dev.chartgen.rules (the PrometheusRule's spec, promtool-tested)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))

from kiban_dev.chartgen import dashboards, rules  # noqa: E402

CHART = ROOT / "charts" / "kiban"


def expected_files(root: Path = ROOT) -> dict[Path, str]:
    """Chart path -> the text it must hold (pure apart from reading crds/)."""
    chart = root / "charts" / "kiban"
    files: dict[Path, str] = {}
    for crd in sorted((root / "crds").glob("*.yaml")):
        files[chart / "crds" / crd.name] = crd.read_text(encoding="utf-8")
    for name, model in dashboards.dashboards().items():
        files[chart / "files" / "dashboards" / name] = dashboards.render_dashboard_json(model)
    files[chart / "files" / "rules" / "kiban.rules.yaml"] = rules.render_rules_yaml()
    return files


def generated_dirs(root: Path = ROOT) -> list[tuple[Path, str]]:
    """Directories whose every file is generated (a leftover file there is stale too)."""
    chart = root / "charts" / "kiban"
    return [(chart / "crds", "*.yaml"), (chart / "files" / "dashboards", "*.json"), (chart / "files" / "rules", "*.yaml")]


def stale(root: Path = ROOT) -> list[str]:
    """What differs: missing, outdated or leftover files, relative to the repository root."""
    expected = expected_files(root)
    problems = []
    for path, text in expected.items():
        if not path.is_file():
            problems.append(f"missing {path.relative_to(root)}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"outdated {path.relative_to(root)}")
    for directory, pattern in generated_dirs(root):
        for path in sorted(directory.glob(pattern)):
            if path not in expected:
                problems.append(f"leftover {path.relative_to(root)}")
    return problems


def write(root: Path = ROOT) -> list[Path]:
    """Write every generated file and remove leftovers; returns the paths written or removed."""
    expected = expected_files(root)
    changed = []
    for path, text in expected.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for directory, pattern in generated_dirs(root):
        for path in sorted(directory.glob(pattern)):
            if path not in expected:
                path.unlink()
                changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the chart's generated files are stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for problem in problems:
            print(f"chart is stale: {problem}", file=sys.stderr)
        if problems:
            print("run: python hack/chart/sync.py", file=sys.stderr)
            return 1
        print("chart is in sync")
        return 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
