"""Durability: stop the server and start it again on the same data."""

from __future__ import annotations

import os

import pytest

from conftest import ServerProcess
from wire import WireClient, sft_datum
from test_api import DATASET, MODEL


@pytest.mark.parametrize("lane", ["sqlite", "postgres"])
def test_runs_checkpoints_and_futures_survive_a_restart(lane, tmp_path, tmp_path_factory):
    database_url = None
    if lane == "postgres":
        database_url = os.environ.get("LATHE_TEST_DATABASE_URL")
        if not database_url:
            if os.environ.get("CI"):
                pytest.fail("LATHE_TEST_DATABASE_URL is not set: the PostgreSQL lane must run in CI")
            pytest.skip("PostgreSQL lane: set LATHE_TEST_DATABASE_URL (scripts/with-postgres.sh does)")
    server = ServerProcess(tmp_path / "data", tmp_path_factory.getbasetemp() / "models", database_url)
    key = server.create_key("restart")
    server.start()
    try:
        c = WireClient(server.url, key)
        c.start()
        run = c.create_model(MODEL, rank=4, seed=1)
        batch = [sft_datum(s) for s in DATASET]
        for _ in range(3):
            run.forward_backward(batch)
            run.optim_step(learning_rate=1e-2)
        done_id = run.submit_forward_backward(batch, forward_only=True)
        before = c.retrieve(done_id, "Forward", proto=True)["metrics"]["loss:sum"]
        state = run.save_state("before-restart")
    finally:
        server.stop()

    server.start()
    try:
        c2 = WireClient(server.url, key)
        assert c2.ok(c2.http.get(f"api/v1/training_runs/{run.model_id}"))["last_checkpoint"]["tinker_path"] == state
        assert [ck["checkpoint_id"] for ck in c2.ok(c2.http.get(f"api/v1/training_runs/{run.model_id}/checkpoints"))["checkpoints"]] == ["weights/before-restart"]
        # A completed future is still retrievable after the restart.
        assert c2.retrieve(done_id, "Forward", proto=True)["metrics"]["loss:sum"] == pytest.approx(before)
        # The old run goes on where it was: its adapter is rebuilt from the request log.
        c2.start()
        run.client = c2  # the restarted server listens on a new port
        continued = run.forward_backward(batch, forward_only=True)["metrics"]["loss:sum"]
        assert continued == pytest.approx(before, rel=1e-5)
        # A new training client from the saved state continues where the old one was.
        resumed = c2.create_model(MODEL, rank=4)
        resumed.load_state(state, optimizer=True)
        after = resumed.forward_backward(batch, forward_only=True)["metrics"]["loss:sum"]
        assert after == pytest.approx(before, rel=1e-5)
    finally:
        server.stop()
