"""CI-sized load test (`python -m benchmarks.load` is the full one): concurrent gradio_client users against
the real app each get the answer a sequential run gives for their input, and the app's memory stays flat."""

from benchmarks.load import example_cases, run_load


def test_concurrent_users_get_their_own_answers_and_memory_stays_flat(app_server):
    result = run_load(app_server.url, example_cases(), requests=12, clients=3, max_new_tokens=6, pid=app_server.pid)
    assert (result.ok, result.busy, result.wrong, result.failed) == (12, 0, 0, 0), result.problems
    assert len(result.latencies) == 12
    assert result.rss_after_mb - result.rss_before_mb < 150, result.markdown()
