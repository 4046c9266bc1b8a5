"""python-can's udp_multicast through PythonCanPort.

Its multicast cannot be bound to an interface, so in the normal network namespace it would
leave the machine through eth0: the port refuses to open it there (tested without creating a
single socket). Real traffic runs only inside a private namespace that has loopback alone
(``unshare -n``, as root): two processes talk over it there, and the CanPort contract suite
runs against it.

Run as a script (``python tests/test_can_udp_multicast.py pair|receiver ...``) this file is
the program those namespaced processes run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import can
import pytest

from drivers.can_bus import PythonCanPort, non_loopback_interfaces_up
from hal.errors import DeviceError
from hal.types import CanFrame

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
GROUP = "239.74.163.2"
NETNS_SETUP = "ip link set lo up && ip route add 224.0.0.0/4 dev lo && exec "


def _frames_to_send() -> list[CanFrame]:
    frames = [CanFrame(0x100 + i, i.to_bytes(2, "big") + bytes(6)) for i in range(40)]
    frames += [
        CanFrame(0x18FEF100, b"\x01\x02\x03", is_extended_id=True),
        CanFrame(0x7DF, is_remote_frame=True, remote_dlc=8),
        CanFrame(0x321, bytes(range(64)), is_fd=True, bitrate_switch=True),
    ]
    return frames


def _as_json(frame: CanFrame) -> list[object]:
    return [frame.arbitration_id, frame.data.hex(), frame.is_extended_id, frame.is_fd, frame.is_remote_frame, frame.dlc]


# ---------------------------------------------------------------- in the normal namespace


async def test_guard_refuses_udp_multicast_while_other_interfaces_are_up(monkeypatch: pytest.MonkeyPatch) -> None:
    up = non_loopback_interfaces_up()
    if not up:
        pytest.skip("only loopback is up in this namespace: there is nothing for the guard to refuse")

    def tripwire(*args: object, **kwargs: object) -> None:  # would create the multicast socket
        raise AssertionError(f"can.Bus was called ({kwargs.get('interface')}): the guard let it through")

    monkeypatch.setattr(can, "Bus", tripwire)
    port = PythonCanPort("can0", interface="udp_multicast", channel=GROUP, port=43113)
    with pytest.raises(DeviceError) as info:
        await port.open()
    message = str(info.value)
    assert "refusing to open udp_multicast" in message and "namespace" in message
    assert all(name in message for name in up)
    assert not port.is_open
    with pytest.raises(DeviceError, match="not open"):
        await port.send(CanFrame(0x1))


# ---------------------------------------------------------------- inside a private namespace


def _netns_available() -> None:
    if os.geteuid() != 0:
        pytest.skip("a private network namespace needs root")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare and ip (util-linux, iproute2) are needed")
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", NETNS_SETUP + "true"], capture_output=True, text=True, timeout=10
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace here: {probe.stderr.strip()}")


def _in_netns(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    command = NETNS_SETUP + " ".join(args)
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.netns
def test_two_processes_talk_over_udp_multicast_in_a_private_namespace() -> None:
    _netns_available()
    result = _in_netns([sys.executable, str(HERE), "pair"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    want = [_as_json(f) for f in _frames_to_send()]
    assert report["interfaces_up"] == []
    assert report["sender_rx_path"] == "loop"
    assert sorted(report["acks"]) == [0x7A0, 0x7A1]  # one frame back from each receiver
    paths = set()
    for rx in report["receivers"]:
        assert rx["frames"] == want, f"receiver {rx['name']} ({rx['rx_path']})"
        assert rx["channels"] == [rx["name"]]
        # the other receiver's ack may already have arrived too (multicast reaches everyone)
        assert rx["rx_frames"] in (len(want), len(want) + 1) and rx["overruns"] == 0
        paths.add(rx["rx_path"])
    assert paths == {"loop", "thread"}  # add_reader on the socket, and the reader thread


@pytest.mark.netns
def test_can_port_contract_over_udp_multicast_in_a_private_namespace() -> None:
    _netns_available()
    contract = REPO / "tests" / "contract" / "test_can_contract.py"
    args = [sys.executable, "-m", "pytest", str(contract), "-q", "-k", "udp_multicast", "-p", "no:cacheprovider"]
    result = _in_netns(args, env={"ACC_CAN_NETNS": "1"})
    assert result.returncode == 0, result.stdout[-4000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary


# ---------------------------------------------------------------- the namespaced programs


async def _receiver(name: str, port_no: int, rx_mode: str, count: int, ack_id: int) -> dict[str, object]:
    port = PythonCanPort(name, interface="udp_multicast", channel=GROUP, port=port_no, fd=True, rx_mode=rx_mode)
    async with port:
        print("READY", flush=True)
        got: list[CanFrame] = []
        async with asyncio.timeout(20), contextlib.aclosing(port.frames()) as frames:
            async for frame in frames:
                got.append(frame)
                if len(got) >= count:
                    break
        await port.send(CanFrame(ack_id, b"ack"))
        stats = port.stats()
        return {
            "name": name,
            "rx_path": port.rx_path,
            "frames": [_as_json(f) for f in got],
            "channels": sorted({f.channel for f in got}),
            "rx_frames": stats.rx_frames,
            "overruns": stats.overruns,
        }


async def _pair() -> dict[str, object]:
    port_no = 43000 + os.getpid() % 1000
    sent = _frames_to_send()
    procs = []
    for i, mode in enumerate(("fileno", "thread")):
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(HERE),
                "receiver",
                f"rx{i}",
                str(port_no),
                mode,
                str(len(sent)),
                str(0x7A0 + i),
                stdout=asyncio.subprocess.PIPE,
            )
        )
    sender = PythonCanPort("tx", interface="udp_multicast", channel=GROUP, port=port_no, fd=True)
    acks: list[int] = []
    async with sender:
        for proc in procs:
            assert proc.stdout is not None
            async with asyncio.timeout(20):
                line = await proc.stdout.readline()
            assert line.strip() == b"READY", line
        for frame in sent:
            await sender.send(frame)
            await asyncio.sleep(0.002)  # an unpaced sender loses frames
        async with asyncio.timeout(20), contextlib.aclosing(sender.frames()) as frames:
            async for frame in frames:  # the sender also hears its own frames here
                if frame.arbitration_id in (0x7A0, 0x7A1) and frame.data == b"ack":
                    acks.append(frame.arbitration_id)
                    if len(acks) == 2:
                        break
        rx_path = sender.rx_path
    receivers = []
    for proc in procs:
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        receivers.append(json.loads(out.decode().strip().splitlines()[-1]))
    return {
        "interfaces_up": non_loopback_interfaces_up(),
        "sender_rx_path": rx_path,
        "acks": acks,
        "receivers": receivers,
    }


def _main(argv: list[str]) -> None:
    if non_loopback_interfaces_up():
        raise SystemExit("refusing: interfaces other than lo are up (run only inside unshare -n)")
    if argv[0] == "pair":
        report = asyncio.run(_pair())
    else:
        name, port_no, mode, count, ack = argv[1:6]
        report = asyncio.run(_receiver(name, int(port_no), mode, int(count), int(ack)))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
