"""Bad input: one line naming the problem, a defined exit code, no traceback, nothing written."""

import os

import pytest

from conftest import TOKEN, free_port, run_loadgen
from loadgen.cli import main

CASES = [
    (["run", "throughput", "--stage", "abc"], 2, "stage"),
    (["run", "throughput", "--stage", "1m:lots"], 2, "not a whole number"),
    (["run", "throughput", "--duration", "10 minutes"], 2, "not a duration"),
    (["run", "throughput", "--vus", "0", "--duration", "5s"], 2, "--vus must be between"),
    (["run", "throughput", "--vus", "-5", "--duration", "5s"], 2, "--vus must be between"),
    (["run", "throughput", "--vus", "99999999999", "--duration", "5s"], 2, "--vus must be between"),
    (["run", "throughput", "--vus", "ten", "--duration", "5s"], 2, "not a whole number"),
    (["run", "soak"], 2, "unknown scenario"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "--stage", "1m:10"], 2, "conflicts"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "-e", "MESSAGE_SIZE=big"], 2, "MESSAGE_SIZE"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "-e", "MESSAGE_SIZE=0"], 2, "message size must be between 1 and"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "-e", "GATEWAY_PORT=http"], 2, "GATEWAY_PORT"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "-e", "nonsense"], 2, "KEY=VALUE"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "--rate", "-1"], 2, "--rate"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "--local-ips", "10.0.0.300"], 2, "--local-ips"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "--workers", "0"], 2, "--workers"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "--criterion", "p99<fast"], 2, "criterion"),
    (["run", "cluster", "--vus", "6", "--duration", "5s", "--criterion", "throughput_per_s=off"], 2,
     "throughput_per_s is not among this scenario's criteria (connection_success_rate, connect_p95_ms, "
     "message_p99_ms, message_success_rate): nothing to turn off"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "-e", "GATEWAY_HOST=no-such-host.invalid"], 2, "does not resolve"),
    (["run", "connection", "--stage", "5s:0"], 2, "nothing to test"),
    (["run", "throughput", "--vus", "40000", "--duration", "5s", "--workers", "1"], 2, "workers"),
    (["run", "throughput", "--vus", "300000", "--duration", "5s", "--workers", "64"], 2, "ephemeral ports"),
    (["run", "throughput", "--bogus-flag"], 2, "unrecognized"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "--close-quiesce", "soon"], 2, "--close-quiesce"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "--close-quiesce=-1s"], 2, "--close-quiesce '-1s'"),
    (["run", "throughput", "--vus", "5", "--duration", "5s", "--close-quiesce", "2m"], 2, "--close-quiesce must be between 0 and 60s"),
    (["gateway", "--port", "99999"], 2, "--port"),
]


@pytest.mark.parametrize("argv,code,words", CASES, ids=[" ".join(c[0][1:4]) for c in CASES])
def test_bad_input_is_one_line_and_exit_code(argv, code, words, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTH_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    for key in ("GATEWAY_HOST", "GATEWAY_PORT", "MESSAGE_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loadgen: error:"), err
    assert words in err[0]
    assert not os.path.exists(tmp_path / "loadgen-out") or not any((tmp_path / "loadgen-out").rglob("*.csv"))


def test_missing_token_is_refused(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("AUTH_TOKEN", raising=False)
    assert main(["run", "throughput", "--vus", "2", "--duration", "2s", "--out", str(tmp_path / "o")]) == 2
    assert "no auth token" in capsys.readouterr().err


def test_token_file_must_be_private(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("AUTH_TOKEN", raising=False)
    f = tmp_path / "token"
    f.write_text(TOKEN)
    f.chmod(0o644)
    assert main(["run", "throughput", "--vus", "2", "--duration", "2s", "--token-file", str(f)]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_unreachable_gateway_exit_1_one_line_no_traceback(tmp_path):
    r = run_loadgen("run", "throughput", "--vus", "2", "--duration", "2s", "-e", f"GATEWAY_PORT={free_port()}",
                    "--out", str(tmp_path / "o"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unreachable: connection refused" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_wrong_token_reported_as_401(gateway, tmp_path):
    r = run_loadgen("run", "throughput", "--vus", "2", "--duration", "2s", "-e", f"GATEWAY_PORT={gateway.port}",
                    "--out", str(tmp_path / "o"), token="not-the-token")
    assert r.returncode == 1 and "rejected AUTH_TOKEN (HTTP 401)" in r.stderr and "Traceback" not in r.stderr


def test_out_dir_of_an_earlier_run_is_never_overwritten(gateway, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    r = run_loadgen("run", "throughput", "--vus", "2", "--duration", "2s", "-e", f"GATEWAY_PORT={gateway.port}",
                    "--out", str(out))
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert (out / "summary.json").read_text() == "{}"
