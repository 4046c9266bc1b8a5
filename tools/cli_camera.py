"""``acc camera probe|snapshot``: check the configured camera and grab one frame.

The camera is the agent's ``[camera]`` (``--config``), or one given here: ``--device /dev/videoN``
(V4L2), ``--folder DIR`` (image-folder replay) or ``--video FILE`` (video replay). A V4L2 camera
the running agent is capturing from may refuse a second reader (EBUSY): stop the agent first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent import exitcodes

__all__ = ["grab_frame", "probe_camera", "register"]

SNAPSHOT_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cam = sub.add_parser("camera", help="probe the camera, take a snapshot", description=__doc__.split("\n\n")[0])
    cs = cam.add_subparsers(dest="camera_command", metavar="SUBCOMMAND")
    cs.required = True
    probe = cs.add_parser(
        "probe",
        help="open the camera and read one frame: size, format, device capabilities",
        description="Open the camera and read one frame. Exit status: 0 a frame was read, "
        "66 no camera configured or it cannot be opened / gives no frame, 78 bad config.",
    )
    _source_args(probe)
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(func=cmd_probe)
    snap = cs.add_parser(
        "snapshot",
        help="write one frame to FILE (.png or .jpg)",
        description="Grab one frame and write it as PNG or JPEG (by FILE's suffix). Exit status: 0 written, "
        "2 bad suffix, 1 cannot write FILE, 66 no camera / no frame, 78 bad config.",
    )
    snap.add_argument("file", type=Path, metavar="FILE", help="output image: .png, .jpg or .jpeg")
    _source_args(snap)
    snap.add_argument("--json", action="store_true", help="machine-readable output")
    snap.set_defaults(func=cmd_snapshot)


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--device", help="V4L2 device (/dev/video0)")
    g.add_argument("--folder", help="folder of PNG/JPEG frames (replay)")
    g.add_argument("--video", help="video file (replay)")
    p.add_argument("--config", help="agent config for [camera] (default /etc/autochain/agent.toml when it exists)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a frame (default 5)")


def camera_config(args: argparse.Namespace) -> Any:
    """The CameraConfig to use: the flags, else the agent's config. ``ConfigError`` propagates."""
    from agent.config import CameraConfig, load_config
    from tools.cli_offline import config_path

    if args.device:
        return CameraConfig(backend="v4l2", path=args.device)
    if args.folder:
        return CameraConfig(backend="folder", path=args.folder)
    if args.video:
        return CameraConfig(backend="video", path=args.video)
    path = config_path(args.config)
    return load_config(path).camera if path else CameraConfig()


def _make_camera(cfg: Any) -> Any:
    from hal.registry import load_backend

    cls = load_backend("camera", cfg.backend)
    if cfg.backend == "v4l2":
        return cls(cfg.path, width=cfg.width, height=cfg.height, fps=cfg.fps, name="camera")
    if cfg.backend == "folder":
        return cls(cfg.path, fps=cfg.fps, loop=False, paced=False, name="camera")
    return cls(cfg.path, loop=False, paced=False, name="camera")


async def grab_frame(cfg: Any, seconds: float = 5.0) -> tuple[Any, dict[str, Any]]:
    """(first frame, facts about the camera); ``DeviceError`` / ``TimeoutError`` / ``OSError`` say why not."""
    facts: dict[str, Any] = {"backend": cfg.backend, "path": cfg.path}
    if cfg.backend == "v4l2":
        from drivers.camera_v4l2 import query_capabilities

        cap = await asyncio.to_thread(query_capabilities, cfg.path)
        facts.update(driver=cap.driver, card=cap.card, bus_info=cap.bus_info, capabilities=cap.cap_names())
    camera = _make_camera(cfg)
    async with asyncio.timeout(seconds):
        await camera.open()
        try:
            if hasattr(camera, "files"):
                facts["frames_in_folder"] = len(camera.files)
            async for frame in camera.frames():
                return frame, facts
        finally:
            await camera.close()
    raise TimeoutError("the camera gave no frame (empty folder or video?)")


def probe_camera(cfg: Any, timeout: float = 5.0) -> tuple[dict[str, Any], Any]:
    """(report with ok/error, frame or None); never raises for a device problem."""
    from hal.errors import DeviceError

    if cfg.backend == "none":
        return {"backend": "none", "ok": False, "error": "no camera configured (camera.backend = 'none')"}, None
    try:
        frame, facts = asyncio.run(grab_frame(cfg, timeout))
    except (DeviceError, OSError, ValueError) as err:
        return {"backend": cfg.backend, "path": cfg.path, "ok": False, "error": str(err)}, None
    except TimeoutError as err:
        return {
            "backend": cfg.backend,
            "path": cfg.path,
            "ok": False,
            "error": str(err) or f"no frame within {timeout:g} s",
        }, None
    facts.update(ok=True, width=frame.width, height=frame.height, pixel_format=frame.pixel_format)
    return facts, frame


def _load(args: argparse.Namespace) -> tuple[Any, int]:
    from agent.config import ConfigError

    try:
        return camera_config(args), exitcodes.OK
    except ConfigError as err:
        sys.stderr.write(f"acc camera {args.camera_command}: {err}\n")
        return None, exitcodes.CONFIG


def _render(r: dict[str, Any]) -> str:
    if not r["ok"]:
        return f"camera    FAIL: {r['error']}\n"
    lines = [f"camera    {r['backend']} {r['path']}"]
    if "card" in r:
        lines.append(f"device    {r['card']} (driver {r['driver']}, {r['bus_info']})")
        lines.append(f"caps      {', '.join(r['capabilities'])}")
    if "frames_in_folder" in r:
        lines.append(f"frames    {r['frames_in_folder']} image(s) in the folder")
    lines.append(f"frame     {r['width']}x{r['height']} {r['pixel_format']}")
    if "written" in r:
        lines.append(f"written   {r['written']}")
    return "\n".join(lines) + "\n"


def _out(args: argparse.Namespace, r: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(r, indent=2, sort_keys=True) + "\n")
    elif r["ok"]:
        sys.stdout.write(_render(r))
    else:
        sys.stderr.write(f"acc camera {args.camera_command}: {r['error']}\n")


def cmd_probe(args: argparse.Namespace) -> int:
    cfg, code = _load(args)
    if code:
        return code
    report, _frame = probe_camera(cfg, args.timeout)
    _out(args, report)
    return exitcodes.OK if report["ok"] else exitcodes.NO_INPUT


def _to_image(frame: Any) -> Any:
    import io

    from PIL import Image

    if frame.pixel_format == "RGB3":
        return Image.frombytes("RGB", (frame.width, frame.height), frame.data)
    if frame.pixel_format == "GREY":
        return Image.frombytes("L", (frame.width, frame.height), frame.data)
    if frame.pixel_format == "MJPG":
        return Image.open(io.BytesIO(frame.data))
    raise ValueError(f"cannot convert pixel format {frame.pixel_format} to an image")


def cmd_snapshot(args: argparse.Namespace) -> int:
    fmt = SNAPSHOT_SUFFIXES.get(args.file.suffix.lower())
    if fmt is None:
        sys.stderr.write(f"acc camera snapshot: {args.file}: the name must end in .png, .jpg or .jpeg\n")
        return exitcodes.USAGE
    cfg, code = _load(args)
    if code:
        return code
    report, frame = probe_camera(cfg, args.timeout)
    if frame is not None:
        try:
            _to_image(frame).convert("RGB" if fmt == "JPEG" else None).save(args.file, format=fmt)
        except (OSError, ValueError) as err:
            sys.stderr.write(f"acc camera snapshot: cannot write {args.file}: {err}\n")
            return exitcodes.FAILURE
        report["written"] = str(args.file)
    _out(args, report)
    return exitcodes.OK if report["ok"] else exitcodes.NO_INPUT
