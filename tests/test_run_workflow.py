"""scripts/run_workflow.py against a small fake of ComfyUI's HTTP API (the real one: tests/integration)."""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import run_workflow  # noqa: E402

PNG = b"\x89PNG fake"
NODE_ERRORS = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""},
               "node_errors": {"5": {"class_type": "KSampler", "errors": [{"message": "Return type mismatch between linked nodes",
                                                                          "details": "positive, received_type(MODEL) mismatch input_type(CONDITIONING)"}]}}}


class FakeComfy(BaseHTTPRequestHandler):
    polls = 0
    seen = []

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        graph = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"]
        FakeComfy.seen.append(graph)
        if "bad" in graph:
            return self.reply(400, NODE_ERRORS)
        self.reply(200, {"prompt_id": "fails" if "fail" in graph else "ok"})

    def do_GET(self):
        if self.path == "/queue":
            return self.reply(200, {"queue_running": [1], "queue_pending": []})
        if self.path.startswith("/view"):
            return self.reply(200, PNG)
        prompt_id = self.path.rsplit("/", 1)[1]
        FakeComfy.polls += 1
        if FakeComfy.polls < 3:
            return self.reply(200, {})
        if prompt_id == "fails":
            status = {"status_str": "error", "completed": False, "messages": [
                ["execution_error", {"node_type": "FairCheckpointLoader", "exception_message": "'x' is a 'classifier' checkpoint\n"}]]}
            return self.reply(200, {prompt_id: {"status": status, "outputs": {}}})
        outputs = {"7": {"images": [{"filename": f"img_{i}.png", "subfolder": "", "type": "output"} for i in range(3)]}}
        self.reply(200, {prompt_id: {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": outputs}})


@pytest.fixture
def server():
    FakeComfy.polls, FakeComfy.seen = 0, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeComfy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def write(tmp_path, graph):
    path = tmp_path / "g.api.json"
    path.write_text(json.dumps(graph))
    return str(path)


def test_runs_and_downloads_the_saved_images(server, tmp_path, capsys):
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 0, "sampler_name": "euler"}}}
    code = run_workflow.main([write(tmp_path, graph), "--server", server, "--out", str(tmp_path / "out"),
                              "--set", "3.seed=7", "--set", "3.sampler_name=heun"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img_0.png", "img_1.png", "img_2.png"]
    assert (tmp_path / "out" / "img_0.png").read_bytes() == PNG
    assert FakeComfy.seen[0]["3"]["inputs"] == {"seed": 7, "sampler_name": "heun"}
    assert "done" in capsys.readouterr().err


def test_invalid_graph_shows_node_errors_and_exits_2(server, tmp_path, capsys):
    assert run_workflow.main([write(tmp_path, {"bad": {}}), "--server", server]) == 2
    err = capsys.readouterr().err
    assert "Prompt outputs failed validation" in err
    assert "node 5 (KSampler): Return type mismatch between linked nodes: positive, received_type(MODEL)" in err


def test_failed_run_shows_the_node_error_and_exits_1(server, tmp_path, capsys):
    assert run_workflow.main([write(tmp_path, {"fail": {"class_type": "X", "inputs": {}}}), "--server", server]) == 1
    assert "FairCheckpointLoader: 'x' is a 'classifier' checkpoint" in capsys.readouterr().err


def test_bad_options_and_ui_files_are_refused(server, tmp_path, capsys):
    graph = {"3": {"class_type": "KSampler", "inputs": {}}}
    assert run_workflow.main([write(tmp_path, graph), "--server", server, "--set", "9.seed=1"]) == 2
    assert "--set must be NODE.INPUT=VALUE with NODE one of ['3'], got '9.seed=1'" in capsys.readouterr().err
    assert run_workflow.main([write(tmp_path, {"nodes": [], "links": []}), "--server", server]) == 2
    assert "UI-format workflow" in capsys.readouterr().err


def test_unreachable_server(tmp_path, capsys):
    assert run_workflow.main([write(tmp_path, {}), "--server", "127.0.0.1:1"]) == 1
    assert "cannot reach ComfyUI at 127.0.0.1:1" in capsys.readouterr().err
