"""Run a real third-party benchmark client, kubernetes-sigs' inference-perf, against kiban-sim.

inference-perf 0.7.0 needs Python >= 3.12 (the project runs on 3.11), so it gets a virtualenv of
its own, cached outside the repository like the pinned tools: ~/.cache/kiban/inference-perf-
<version>-py312 (override the root with KIBAN_CACHE_DIR), built once from PyPI with pip (a few
minutes cold; a stamp file makes later runs instant). The interpreter comes from pyenv
(~/.pyenv/versions/3.12*) or `python3.12` on PATH; without one it fails with a clear message.

Tokenizer: inference-perf always loads a Hugging Face tokenizer (`AutoTokenizer.from_pretrained`,
client/modelserver/openai_client.py) to count tokens and to re-tokenise every streamed chunk
(reportgen/base.py `correct_streamed_response_metrics`, which counts a mismatch with the server's
`completion_tokens`). No model weights or hub files can be fetched here, and no PyPI package
ships the tokenizer of a Llama model, so it gets the simulator's own rule written as a tokenizer
(`kiban_serving.sim.tokens.write_hf_tokenizer`: word level, whitespace split, the simulator's
vocabulary): its counts agree with the simulator's by construction, which is what a user
pointing inference-perf at vLLM with the served model's tokenizer gets.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from kiban_serving.sim.tokens import write_hf_tokenizer

INFERENCE_PERF_VERSION = "0.7.0"
PYTHON_MINOR = "3.12"
INSTALL_TIMEOUT_S = 1800


class ConformanceSetupError(RuntimeError):
    """The client's environment cannot be built; the message says what is missing."""


def cache_root() -> Path:
    return Path(os.environ.get("KIBAN_CACHE_DIR") or Path.home() / ".cache" / "kiban")


def venv_dir() -> Path:
    return cache_root() / f"inference-perf-{INFERENCE_PERF_VERSION}-py{PYTHON_MINOR.replace('.', '')}"


def find_python312() -> Path:
    """A Python 3.12 interpreter: pyenv's, else python3.12 on PATH."""
    candidates = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / f"{PYTHON_MINOR}*" / "bin" /
                                      f"python{PYTHON_MINOR}")), reverse=True)
    on_path = shutil.which(f"python{PYTHON_MINOR}")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        if Path(candidate).exists():
            return Path(candidate)
    raise ConformanceSetupError(
        f"inference-perf {INFERENCE_PERF_VERSION} needs Python >= {PYTHON_MINOR}; none found in "
        f"~/.pyenv/versions/{PYTHON_MINOR}* or as python{PYTHON_MINOR} on PATH. Install one "
        f"(e.g. `pyenv install {PYTHON_MINOR}`) and run again.")


def ensure_inference_perf() -> Path:
    """The inference-perf executable in its cached virtualenv, building it when needed."""
    root = venv_dir()
    executable = root / "bin" / "inference-perf"
    stamp = root / ".kiban-installed"
    if stamp.exists() and executable.exists():
        return executable
    python = find_python312()
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    steps = [[str(python), "-m", "venv", str(root)],
             [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              f"inference-perf=={INFERENCE_PERF_VERSION}"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0:
            raise ConformanceSetupError(f"`{' '.join(step)}` failed ({done.returncode}): "
                                        f"{(done.stderr or done.stdout)[-2000:]}")
    stamp.write_text(f"inference-perf=={INFERENCE_PERF_VERSION} with {python}\n")
    return executable


@dataclass(frozen=True)
class InferencePerfRun:
    """What one run left: its exit code, reports (file name -> JSON) and log."""

    returncode: int
    reports: dict[str, dict]
    log: str

    def report(self, suffix: str) -> dict:
        matches = [body for name, body in self.reports.items() if name.endswith(suffix)]
        if len(matches) != 1:
            raise KeyError(f"expected one report ending {suffix!r}, have {sorted(self.reports)}")
        return matches[0]


def inference_perf_config(base_url: str, model: str, prometheus_url: str, tokenizer_dir: Path, report_dir: Path,
                          *, rate: float, duration_s: float, groups: int = 4, prompts_per_group: int = 8,
                          system_prompt_len: int = 256, question_len: int = 32, output_len: int = 24) -> dict:
    """A constant-rate, streaming, shared-prefix completions run with Prometheus metrics (pure)."""
    return {
        "api": {"type": "completion", "streaming": True},
        "data": {"type": "shared_prefix", "shared_prefix": {
            "num_groups": groups, "num_prompts_per_group": prompts_per_group,
            "system_prompt_len": system_prompt_len, "question_len": question_len, "output_len": output_len}},
        "load": {"type": "constant", "stages": [{"rate": rate, "duration": duration_s}], "num_workers": 1},
        "server": {"type": "vllm", "model_name": model, "base_url": base_url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tokenizer_dir)},
        "metrics": {"type": "prometheus", "prometheus": {"url": prometheus_url, "scrape_interval": 1}},
        "report": {"request_lifecycle": {"summary": True, "per_stage": False, "per_request": False},
                   "prometheus": {"summary": True, "per_stage": False}},
        "storage": {"local_storage": {"path": str(report_dir)}},
    }


def run_inference_perf(executable: Path, workdir: Path, config: dict, timeout_s: float = 300.0) -> InferencePerfRun:
    """Write the config, run `inference-perf -c` (DEBUG log: every PromQL query and its answer)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "inference-perf.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(workdir / "hf")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(executable), "-c", str(config_path), "--log-level", "DEBUG"], capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=workdir)
    log = done.stdout + done.stderr
    (workdir / "inference-perf.log").write_text(log)
    reports = {}
    report_dir = Path(config["storage"]["local_storage"]["path"])
    for path in sorted(report_dir.rglob("*.json")):
        try:
            reports[path.name] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return InferencePerfRun(done.returncode, reports, log)


def write_tokenizer(directory: Path, max_model_len: int) -> Path:
    return write_hf_tokenizer(directory, model_max_length=max_model_len)


def empty_prometheus_answers(log: str) -> list[str]:
    """The PromQL queries inference-perf logged an empty answer for ("got result for query '...': ...")."""
    empty = []
    marker = "got result for query '"
    for line in log.splitlines():
        start = line.find(marker)
        if start < 0:
            continue
        rest = line[start + len(marker):]
        query, _, answer = rest.partition("': ")
        if "'result': []" in answer:
            empty.append(query)
    return empty


if __name__ == "__main__":  # `python -m kiban_dev.conformance`: build the cached virtualenv only
    try:
        print(ensure_inference_perf())
    except ConformanceSetupError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        sys.exit(2)
