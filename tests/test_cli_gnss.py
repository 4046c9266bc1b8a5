"""``acc gnss decode``: JSON lines and table on refdata logs, rejects on stderr, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import exitcodes
from tools.acc import main

REPO = Path(__file__).resolve().parent.parent
LOGS = ("garmin17n.log", "bt451.log", "neo-m8n.log", "quectel-L70.log")


def chk_sentences(log: Path) -> list[str]:
    text = log.with_name(log.name + ".chk").read_text(encoding="latin-1")
    return [line for line in text.splitlines() if line.startswith("$")]


@pytest.mark.parametrize("name", LOGS)
def test_decode_json_lists_the_chk_sentences(name: str, refdata: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = refdata / "nmea/gpsd" / name
    assert main(["gnss", "decode", "--json", str(log)]) == exitcodes.OK
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sentence"] for r in records] == chk_sentences(log)
    assert all(set(r["fix"]) == {"mode", "time", "lat", "lon", "alt", "speed", "track"} for r in records)
    assert "rejected 0" in err


def test_decode_json_fix_values(refdata: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = refdata / "nmea/gpsd/garmin17n.log"
    main(["gnss", "decode", "--json", str(log)])
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines()[:2])
    # the first TPV of garmin17n.log.chk, and the GGA's altitude in the second
    assert first["fix"] == {
        "mode": 2,
        "time": "2005-03-16T09:38:02.000Z",
        "lat": pytest.approx(52.219065),
        "lon": pytest.approx(21.010851667),
        "alt": None,
        "speed": 0.0,
        "track": 226.0,
    }
    assert second["fix"]["mode"] == 3 and second["fix"]["alt"] == 137.2


def test_decode_table_and_verbose_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "capture.nmea"
    log.write_bytes(
        b"# header\r\n"
        b"$GPRMC,225446,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E*68\r\n"
        b"\x00\x00garbage\r\n"
        b"$GPRMC,225446,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E*69\r\n"
        b"$GPGGA,184353.07,1929.045,S,02410.506,E,1,04,2.6,100.00,M,-33.9,M,,0000\r\n"
        b"$PGRMM,WGS 84*06\r\n"
    )
    assert main(["gnss", "decode", "-v", str(log)]) == exitcodes.OK
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert rows[0].split()[:4] == ["LINE", "SENTENCE", "MODE", "TIME"]
    assert len(rows) == 3 and rows[1].split()[:4] == ["2", "GPRMC", "2D", "1994-11-19T22:54:46.000Z"]
    assert "49.274166667" in rows[1] and rows[2].split()[1] == "PGRMM"
    assert f"{log}:3: garbage" in err and f"{log}:4: checksum" in err and f"{log}:5: no_checksum" in err
    assert "PGRMM" not in err  # proprietary: accepted, not an error
    assert "rejected 3" in err
    # without -v: only the summary
    main(["gnss", "decode", str(log)])
    _, err = capsys.readouterr()
    assert "garbage 1" in err and f"{log}:3" not in err


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gnss", "decode", str(tmp_path / "missing.log")]) == exitcodes.NO_INPUT
    assert "cannot open" in capsys.readouterr().err
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\xff binary, not NMEA\r\n$GPGGA,1,2,3\r\n")
    assert main(["gnss", "decode", "--json", str(junk)]) == exitcodes.DATA_ERROR
    out, err = capsys.readouterr()
    assert out == "" and "no valid NMEA sentence" in err


def test_acc_entry_point_in_a_subprocess(refdata: Path) -> None:
    log = refdata / "nmea/gpsd/ublox-lea-5q.log"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.acc", "gnss", "decode", "--json", str(log)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["sentence"] for line in proc.stdout.splitlines()] == chk_sentences(log)
