"""``acc model``: the on-device behaviour model: the shipped (or configured) manifest with its
SHA-256 checked against the model file, and, when the agent runs, what it has loaded (the
behaviour service's model versions, the FL model hash and inference latency)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent import exitcodes
from tools.cli_status import find_socket

__all__ = ["model_report", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "model",
        help="behaviour model: manifest, verified SHA-256, classes, metrics; what the agent runs",
        description="Show the on-device model from its manifest (the file's SHA-256 is checked) and, "
        "if the agent answers, the model it has loaded. Exit status: 0 model verified, 1 the model file "
        "does not match its manifest, 66 no manifest or model file, 78 bad config.",
    )
    p.add_argument("--manifest", type=Path, help="manifest JSON (default: fl.model_manifest, else the shipped one)")
    p.add_argument("--config", help="agent config (default /etc/autochain/agent.toml when it exists)")
    p.add_argument("--socket", type=Path, help="diagnostics socket (default: as for acc status)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def manifest_check(manifest_path: Path) -> dict[str, Any]:
    """The manifest's summary and the verdict on its model file (never raises)."""
    from models.manifest import Manifest, ManifestError, model_hash

    out: dict[str, Any] = {"manifest": str(manifest_path), "ok": False}
    try:
        m = Manifest.read(manifest_path)
    except ManifestError as err:
        out["error"] = str(err)
        out["missing"] = True
        return out
    model_path = manifest_path.parent / m.file
    out.update(
        name=m.name,
        version=m.version,
        file=str(model_path),
        sha256=m.sha256,
        classes=list(m.classes),
        features=len(m.feature_names),
        n_weights=m.n_weights,
        window_s=m.window_s,
        created=m.created,
        metrics=_metrics_summary(m.metrics),
    )
    if not model_path.is_file():
        out["error"] = f"model file {model_path} does not exist"
        out["missing"] = True
        return out
    actual = model_hash(model_path)
    out["sha256_actual"] = actual
    out["size_bytes"] = model_path.stat().st_size
    out["ok"] = actual == m.sha256
    if not out["ok"]:
        out["error"] = f"sha256 of {model_path} is {actual}, the manifest says {m.sha256}: refused by the agent"
    return out


def _metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics, one level deep (nested tables such as per-class reports are left out)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, int | float | str | bool):
            out[k] = v
        elif isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, int | float) and not isinstance(v2, bool):
                    out[f"{k}.{k2}"] = v2
    return out


def agent_model(socket: Path | None) -> dict[str, Any] | None:
    """What the running agent says about its model; None when no agent answers."""
    from agent.diagnostics import DiagError, query

    path = find_socket(socket)
    if path is None:
        return None
    try:
        behaviour = query(path, "behaviour")
        fl = query(path, "fl")
    except DiagError:
        return None
    out: dict[str, Any] = {"socket": str(path), "behaviour": None, "fl": None}
    if behaviour:
        out["behaviour"] = {"detectors": behaviour.get("detectors"), "events_by_model": behaviour.get("by_model")}
    if fl:
        out["fl"] = {k: fl.get(k) for k in ("role", "task", "model", "latency", "round", "rounds_done") if k in fl}
    return out


def model_report(manifest: Path | None, config: str | None, socket: Path | None) -> tuple[dict[str, Any], int]:
    from agent.config import ConfigError, load_config
    from models.manifest import ManifestError, default_manifest
    from tools.cli_offline import config_path

    if manifest is None:
        path = config_path(config)
        try:
            configured = load_config(path).fl.model_manifest if path else ""
        except ConfigError as err:
            return {"error": str(err)}, exitcodes.CONFIG
        try:
            manifest = Path(configured) if configured else default_manifest("dbm")
        except ManifestError as err:
            return {"error": str(err), "ok": False}, exitcodes.NO_INPUT
    report = manifest_check(manifest)
    report["agent"] = agent_model(socket)
    if report.get("missing"):
        return report, exitcodes.NO_INPUT
    return report, exitcodes.OK if report["ok"] else exitcodes.FAILURE


def render(r: dict[str, Any]) -> str:
    if "name" not in r:
        return f"model     {r.get('error')}\n"
    lines = [
        f"model     {r['name']} version {r['version']}  ({r.get('created') or 'no date'})",
        f"manifest  {r['manifest']}",
        f"file      {r['file']}" + (f" ({r['size_bytes']} bytes)" if "size_bytes" in r else ""),
        f"sha256    {r['sha256']}",
        f"check     {'OK: the file matches the manifest' if r['ok'] else 'FAIL: ' + r.get('error', '')}",
        f"classes   {', '.join(r['classes'])}",
        f"inputs    {r['features']} features, {r['window_s']:g} s windows, {r['n_weights']} weights",
    ]
    if r["metrics"]:
        lines.append("metrics   " + ", ".join(f"{k} {_num(v)}" for k, v in list(r["metrics"].items())[:8]))
    a = r.get("agent")
    if a is None:
        lines.append("agent     not reachable: showing the manifest only")
    else:
        b, fl = a.get("behaviour"), a.get("fl")
        if b is None and fl is None:
            lines.append("agent     running; behaviour detection and FL are off (no model loaded)")
        if b is not None:
            lines.append(f"agent     detectors {', '.join(b['detectors'] or []) or '-'}")
            if b.get("events_by_model"):
                lines.append(
                    "          events by model: " + ", ".join(f"{k} {v}" for k, v in b["events_by_model"].items())
                )
        if fl is not None:
            lines.append(f"fl        {fl.get('role')} of task {fl.get('task')}, model {str(fl.get('model'))[:16]}...")
            lat = fl.get("latency")
            if lat:
                lines.append(
                    f"latency   inference p50 {lat['infer_p50_us']} us, p99 {lat['infer_p99_us']} us;"
                    f" {lat['train_steps']} training steps"
                )
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    report, code = model_report(args.manifest, args.config, args.socket)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    elif code == exitcodes.CONFIG:
        sys.stderr.write(f"acc model: {report['error']}\n")
    else:
        sys.stdout.write(render(report))
    return code
