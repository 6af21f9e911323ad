"""The bad day against a running service: a second instance, a full state disk, config edits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.service import FALL, INTERVAL, PRIMARY, STANDBY, Service
from tests.support import (
    ROOT,
    MotoServer,
    Process,
    free_port,
    trafficflip_command,
    wait_until,
)

BOUND = FALL * INTERVAL + 2.0  # the acceptance bound for a failover


@pytest.fixture
def service(tmp_path: Path, moto_server: MotoServer) -> Iterator[Service]:
    running = Service(tmp_path, moto_server, steps=[50, 100])
    yield running
    running.close()


def start_serving(service: Service) -> None:
    service.start()
    wait_until(lambda: service.weights() == PRIMARY, timeout=20, what="initial weights")


def journal_kinds(service: Service) -> list[str]:
    out = service.cli("status", "--json", "--journal", "50").stdout
    return [e["kind"] for e in json.loads(out)["journal"]]


def test_a_second_run_on_the_same_state_file_is_refused(service: Service) -> None:
    start_serving(service)
    assert service.process is not None
    second = subprocess.run(
        trafficflip_command("run", "--config", str(service.config)),
        env={**os.environ, **service.env, "TRAFFICFLIP_API__LISTEN": f"127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert second.returncode == 1, second.stderr
    assert f"pid {service.process.pid}" in second.stderr
    assert "state.db" in second.stderr
    # The operator's CLI still works beside the running instance, and it acts on it.
    result = service.cli("hold", "www", "--reason", "checking")
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
    wait_until(lambda: service.www()["held"], timeout=5, what="the hold taken")


def test_reload_takes_a_renamed_serving_site_and_an_added_service(service: Service) -> None:
    start_serving(service)
    service.primary.stop()
    wait_until(lambda: service.weights() == STANDBY, timeout=BOUND, what="failover")
    data = yaml.safe_load(service.config.read_text())
    www = data["services"][0]
    www["sites"][1]["name"] = "backup"  # same targets: the site that serves is renamed
    api = json.loads(json.dumps(www).replace("www", "api"))
    data["services"].append(api)
    service.config.write_text(yaml.safe_dump(data))
    assert service.process is not None
    os.kill(service.process.pid, signal.SIGHUP)
    # At once on the renamed site, no ramp from a site that is gone; the old set retired.
    wait_until(
        lambda: service.weights() == {"primary": 0, "dr": 0, "backup": 100},
        timeout=BOUND,
        what="www on backup",
    )
    wait_until(
        lambda: service.weights("api") == {"primary": 0, "backup": 100},
        timeout=10,
        what="the added service served",
    )
    kinds = journal_kinds(service)
    assert "config_reloaded" in kinds and "site_removed" in kinds
    assert "failback_started" not in kinds[kinds.index("config_reloaded") :]
    # An invalid config changes nothing: the process and its traffic stay.
    service.config.write_text("services: [{name: 'bad name'}]\n")
    os.kill(service.process.pid, signal.SIGHUP)
    wait_until(lambda: "reload_rejected" in service.output(), timeout=5, what="the rejection")
    assert "reload_rejected services[0]" in service.output()
    assert service.process.alive() and service.answering()
    assert service.weights("api") == {"primary": 0, "backup": 100}
    # The same through the API: 400 with the problems, then a valid file is taken.
    rejected = service.post("/api/v1/reload")
    assert rejected.status_code == 400 and rejected.json()["problems"], rejected.text
    service.config.write_text(yaml.safe_dump(data))
    taken = service.post("/api/v1/reload")
    assert taken.status_code == 200, taken.text
    assert service.post("/api/v1/reload", token="").status_code == 401


def test_a_renamed_site_across_a_restart(service: Service) -> None:
    start_serving(service)
    service.primary.stop()
    wait_until(lambda: service.weights() == STANDBY, timeout=BOUND, what="failover")
    assert service.process is not None and service.process.stop() == 0
    data = yaml.safe_load(service.config.read_text())
    data["services"][0]["sites"][1]["name"] = "backup"
    service.config.write_text(yaml.safe_dump(data))
    service.start()
    wait_until(
        lambda: service.weights() == {"primary": 0, "dr": 0, "backup": 100},
        timeout=20,
        what="www on backup after the restart",
    )
    assert "Traceback" not in service.output()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_state_disk_never_stops_a_failover(tmp_path: Path, moto_server: MotoServer) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    service = Service(tmp_path, moto_server, steps=[50, 100])
    try:
        data = yaml.safe_load(service.config.read_text())
        data["state"] = f"sqlite:///{disk / 'state.db'}"
        service.config.write_text(yaml.safe_dump(data))
        start_serving(service)
        wait_until(lambda: service.get("/readyz").status_code == 200, timeout=10, what="ready")
        filler = disk / "filler"
        with open(filler, "wb") as out:  # fill the file system to the last block
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        service.primary.stop()
        wait_until(lambda: service.weights() == STANDBY, timeout=BOUND, what="failover")
        ready = wait_until(
            lambda: (r := service.get("/readyz")).status_code == 503 and r.json(),
            timeout=15,
            what="readyz 503",
        )
        assert any("state store" in reason for reason in ready["reasons"]), ready
        assert "store_error" in service.output()
        metrics = service.get("/metrics").text
        assert "trafficflip_store_up 0.0" in metrics
        filler.unlink()
        wait_until(lambda: service.get("/readyz").status_code == 200, timeout=20, what="ready")
        assert service.process is not None and service.process.stop() == 0
        journal = service.cli("status", "--json", "--journal", "50").stdout
        assert '"kind": "failover"' in journal  # the decided change reached the store after all
    finally:
        service.close()
        subprocess.run(["umount", "-l", str(disk)])


def test_sigterm_flushes_what_is_queued(service: Service) -> None:
    start_serving(service)
    service.primary.stop()
    wait_until(lambda: service.weights() == STANDBY, timeout=BOUND, what="failover")
    assert service.process is not None and service.process.stop() == 0
    assert "failover" in journal_kinds(service)


def test_a_process_that_died_leaves_no_stale_lock(service: Service) -> None:
    start_serving(service)
    assert service.process is not None
    service.process.stop(signal.SIGKILL)
    second = Process(
        trafficflip_command("run", "--config", str(service.config)),
        env=service.env,
        log=service.tmp_path / "second.log",
        cwd=ROOT,
    )
    service.process = second
    wait_until(service.answering, timeout=20, what="the restarted instance")
