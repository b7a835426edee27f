"""CI-sized load test (`python -m benchmarks.load` is the full one): concurrent gradio_client users against
the real app, mixed with visitors who cancel a long seeded sampling answer at its first chunk and with pixel-bomb
uploads, each get the answer a sequential run gives for their input, and the app's memory stays flat."""

from benchmarks.load import example_cases, run_load


def test_concurrent_users_get_their_own_answers_whoever_left_and_memory_stays_flat(app_server):
    result = run_load(app_server.url, example_cases(), requests=12, clients=3, max_new_tokens=6, pid=app_server.pid,
                      disconnects=4, bombs=2)
    assert (result.ok, result.busy, result.wrong, result.failed) == (12, 0, 0, 0), result.problems
    assert result.bombs_refused == 2 and result.disconnects >= 1, result.markdown()
    assert len(result.latencies) == 12
    before, peak, after = result.rss_mb
    assert after - before < 150 and peak - before < 300, result.markdown()
