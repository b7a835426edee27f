"""End to end: the real app (`python app.py`) on 127.0.0.1, driven through gradio_client."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

EXAMPLE = sorted(str(p) for p in Path("examples/linked-star").glob("*.png"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    port = free_port()
    env = {**os.environ, "SAM_PORT": str(port), "SAM_MAX_IMAGES": "4", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if server.poll() is not None:
                raise RuntimeError(f"app exited: {server.stdout.read()}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("app did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def compare(client, files, task="Group captioning", question="", captions=""):
    return client.predict([handle_file(f) for f in files], task, question, captions, "greedy", 8, 0, api_name="/compare")


def test_compare_returns_both_answers_and_the_model(client):
    sam, baseline, details = compare(client, EXAMPLE)
    assert sam.strip() and baseline.strip()
    info = json.loads(details)["model"]
    assert info["source"] == "embedded" and "guidance_identity" in info
    assert "/" not in info["name"]  # no server paths in responses


def test_bad_inputs_get_clear_errors_and_the_next_request_works(client, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(Exception, match="not a readable image"):
        compare(client, [EXAMPLE[0], str(fake)])
    with pytest.raises(Exception, match="At most 4 images"):
        compare(client, EXAMPLE + EXAMPLE)
    with pytest.raises(Exception, match="caption for each image but the last"):
        compare(client, EXAMPLE, task="Storytelling", captions="only one")
    with pytest.raises(Exception, match="Write a question"):
        compare(client, EXAMPLE, task="Free question", question="   ")
    sam, baseline, _ = compare(client, EXAMPLE, task="Storytelling", captions="bobo jumps .\nbobo sleeps .")
    assert sam.strip() and baseline.strip()
