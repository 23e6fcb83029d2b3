"""The embedded MLflow store keeps everything in the run directory."""

from __future__ import annotations

from orchestrator.tracking import ARTIFACTS_DIR, Tracker, tracking_uri


def test_embedded_store_keeps_artifacts_in_the_run_directory(tmp_path, monkeypatch):
    # the current directory is not the run's (under `ray job submit` it is a throwaway copy)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    tracker = Tracker(tracking_uri(None, str(run_dir)), "tests", str(run_dir), "tiny")
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    tracker.client.log_artifact(tracker.parent_run_id, str(artifact))
    stored = run_dir / ARTIFACTS_DIR / tracker.parent_run_id / "artifacts" / "note.txt"
    assert stored.read_text() == "hello"
    assert not (tmp_path / "mlruns").exists()
