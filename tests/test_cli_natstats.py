"""``egressgw nat-stats``: the command end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_support import run_cli

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "src/egressgw/examples/seed-node-nat-list.txt"
GOLDEN = Path(__file__).parent / "golden"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "nat-stats", *args)


def test_seed_example_prints_the_seed_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--from", str(EXAMPLE))
    assert code == 0
    assert out == (GOLDEN / "seed-nat-stats.txt").read_text()
    assert err == (GOLDEN / "seed-nat-stats.stderr.txt").read_text()


def test_json_has_every_field_saturation_and_the_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "--from", str(EXAMPLE), "-o", "json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    top = max(document["rows"], key=lambda row: row["count"])
    assert top == {
        "family": "ipv4",
        "proto": "TCP",
        "egressIP": "172.18.0.2",
        "remoteIP": "104.198.14.52",
        "remotePort": 443,
        "remoteAddr": "104.198.14.52:443",
        "count": 294,
        "rank": 1,
    }
    assert document["saturation"]["ipv4"] == pytest.approx(294 / 32767)
    assert document["divisor"] == 32767
    assert document["source"] == {
        "name": str(EXAMPLE),
        "format": "cilium",
        "lines": 702,
        "skipped": 0,
    }


def test_yaml_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--from", str(EXAMPLE), "-o", "yaml")
    assert code == 0
    assert len(yaml.safe_load(out)["rows"]) == 8


def test_node_port_range_sets_the_divisor(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--from", str(EXAMPLE), "--node-port-range", "30000,40000")
    assert code == 0
    assert "saturation ipv4: 1.15% (294/25534)\n" in err
    assert out == (GOLDEN / "seed-nat-stats.txt").read_text()


def test_entries_limits_rows_per_family(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--from", str(EXAMPLE), "--nat-map-stats-entries", "1")
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines()[1:]] == ["294", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nat-map-stats-entries", "0"], "--nat-map-stats-entries: 0: must be between 1"),
        (["--nat-map-stats-entries", "5000"], "--nat-map-stats-entries: 5000"),
        (["--node-port-range", "30000"], "--node-port-range: '30000': expected MIN,MAX"),
        (["--node-port-range", "30000,65535"], "--node-port-range"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, "--from", str(EXAMPLE), *args)
    assert (code, out) == (2, "")
    assert err.startswith("egressgw: error: ") and message in err
    assert err.count("\n") == 1


def test_unknown_choices_are_click_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--from", str(EXAMPLE), "-o", "xml")
    assert code == 2 and "'xml' is not one of" in err
    code, _, err = run(capsys)
    assert code == 2 and "--from" in err


def test_garbled_line_exits_2_naming_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = EXAMPLE.read_text().splitlines()
    lines[99] = lines[99].replace(" -> ", " ->")
    dump = tmp_path / "garbled.txt"
    dump.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "--from", str(dump))
    assert (code, out) == (2, "")
    assert err.startswith(f"egressgw: error: {dump}:100: not a cilium-dbg bpf nat list entry")
    code, out, err = run(capsys, "--from", str(dump), "--skip-invalid")
    assert code == 0
    assert err.startswith(f"{dump}: skipped 1 invalid line(s)\n")
    assert len(out.splitlines()) == 9


def test_missing_file_and_unknown_format(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "--from", str(tmp_path / "nope.txt"))
    assert code == 2 and "nope.txt: cannot read: No such file or directory" in err
    odd = tmp_path / "odd.txt"
    odd.write_text("hello\n")
    code, _, err = run(capsys, "--from", str(odd))
    assert code == 2 and f"{odd}:1: cannot tell the format" in err
    code, _, err = run(capsys, "--from", str(EXAMPLE), "--format", "conntrack")
    assert code == 2 and f"{EXAMPLE}:1: not a conntrack -L line" in err


def test_empty_dump_prints_the_header_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, out, err = run(capsys, "--from", str(empty))
    assert (code, err) == (0, "")
    assert out == "# IPFamily   Proto   EgressIP   RemoteAddr   Count\n"


def test_reads_stdin_and_does_not_load_the_heavy_stack() -> None:
    program = (
        "import sys\n"
        "from egressgw.cli import main\n"
        "main(['nat-stats', '--from', '-', '--format', 'conntrack'])\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = {'numpy', 'numba', 'matplotlib', 'yaml'} & loaded\n"
        "print('heavy:', sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        input=(GOLDEN / "conntrack-L.txt").read_bytes(),
        capture_output=True,
        check=True,
    )
    out = result.stdout.decode()
    assert "ipv4         TCP      198.51.100.1      198.51.100.2:8080      3\n" in out
    assert out.endswith("heavy: []\n")


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "egressgw nat-stats --from src/egressgw/examples/seed-node-nat-list.txt" in out
    assert "--nat-map-stats-entries" in out and "--skip-invalid" in out


def test_a_bad_line_deep_in_a_big_file_exits_2_naming_it(tmp_path: Path) -> None:
    # Big enough for the forked scan (cilium.PARALLEL_MIN_BYTES): the bad line, one only
    # the digit check sees (octet 256), is in the second half, read by the child.
    from egressgw.dumps import cilium  # noqa: PLC0415
    from egressgw.dumps.synthetic import bench_lines  # noqa: PLC0415

    lines = "".join(bench_lines(80_000, seed=47)).splitlines()
    number = 71_234
    lines[number - 1] = lines[number - 1].replace(".", ".256", 1)
    dump = tmp_path / "big.txt"
    dump.write_text("\n".join(lines) + "\n")
    assert dump.stat().st_size > cilium.PARALLEL_MIN_BYTES
    command = [sys.executable, "-c", "from egressgw.cli import main; main()",
               "nat-stats", "--from", str(dump)]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"egressgw: error: {dump}:{number}: ")
    assert len(result.stderr.splitlines()) == 1
    result = subprocess.run([*command, "--skip-invalid"], check=False, capture_output=True,
                            text=True)
    assert result.returncode == 0
    assert result.stderr.startswith(f"{dump}: skipped 1 invalid line(s)\n")
