#!/usr/bin/env python3
"""Run an API-format ComfyUI workflow headless against a running ComfyUI, standard library only.

    python scripts/run_workflow.py example_workflows/fair_checkpoint_loader.api.json --server 127.0.0.1:8188 --out out/

Queues the graph (``POST /prompt``), prints a progress line while it runs (polling ``GET /history/{id}``),
then downloads every image the graph saved (``GET /view``) into ``--out``. An invalid graph ends with
ComfyUI's ``node_errors``, one line per problem, and exit status 2; a failed run prints ComfyUI's error and
exits 1. ``--set NODE.INPUT=VALUE`` changes an input before queueing (e.g. ``--set 3.seed=7``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


class WorkflowError(RuntimeError):
    """The run failed (exit status 1)."""


class InvalidWorkflow(WorkflowError):
    """The graph or an option is invalid (exit status 2)."""


def request(server: str, path: str, payload: dict | None = None, timeout: float = 30) -> bytes:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"http://{server}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def node_error_lines(body: dict) -> list[str]:
    lines = [f"{body.get('error', {}).get('message', 'invalid prompt')}: {body.get('error', {}).get('details', '')}".rstrip(": ")]
    for node_id, err in (body.get("node_errors") or {}).items():
        for e in err.get("errors", []):
            lines.append(f"  node {node_id} ({err.get('class_type', '?')}): {e.get('message')}: {e.get('details', '')}")
    return lines


def queue(server: str, graph: dict, client_id: str) -> str:
    try:
        return json.loads(request(server, "/prompt", {"prompt": graph, "client_id": client_id}))["prompt_id"]
    except urllib.error.HTTPError as e:
        if e.code == 400:
            raise InvalidWorkflow("\n".join(node_error_lines(json.loads(e.read() or b"{}")))) from None
        raise


def wait(server: str, prompt_id: str, timeout: float, poll: float = 0.5) -> dict:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        history = json.loads(request(server, f"/history/{prompt_id}"))
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"].get("status_str") == "error":
                messages = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                detail = "; ".join(f"{m.get('node_type')}: {m.get('exception_message', '').strip()}" for m in messages)
                raise WorkflowError(f"prompt {prompt_id} failed: {detail or entry['status']}")
            return entry
        queue_state = json.loads(request(server, "/queue"))
        running = len(queue_state.get("queue_running", []))
        print(f"\r{prompt_id[:8]}: {'running' if running else 'queued'} {time.monotonic() - start:6.1f} s", end="", file=sys.stderr, flush=True)
        time.sleep(poll)
    raise WorkflowError(f"prompt {prompt_id} did not finish within {timeout} s")


def download_images(server: str, entry: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for node_output in entry.get("outputs", {}).values():
        for image in node_output.get("images", []):
            query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
            target = out / image["filename"]
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(request(server, f"/view?{query}"))
            tmp.replace(target)
            saved.append(target)
    return saved


def apply_sets(graph: dict, sets: list[str]) -> None:
    for item in sets:
        key, _, value = item.partition("=")
        node_id, _, name = key.partition(".")
        if node_id not in graph or not name or not _:
            raise InvalidWorkflow(f"--set must be NODE.INPUT=VALUE with NODE one of {sorted(graph)}, got {item!r}")
        try:
            graph[node_id]["inputs"][name] = json.loads(value)  # numbers, true/false, lists
        except json.JSONDecodeError:
            graph[node_id]["inputs"][name] = value  # a plain string


def run(workflow: Path, server: str, out: Path, timeout: float, sets: list[str]) -> list[Path]:
    graph = json.loads(workflow.read_text())
    if "nodes" in graph and "links" in graph:
        raise InvalidWorkflow(f"{workflow} is a UI-format workflow; run its API-format twin (*.api.json)")
    apply_sets(graph, sets)
    prompt_id = queue(server, graph, uuid.uuid4().hex)
    entry = wait(server, prompt_id, timeout)
    print(f"\r{prompt_id[:8]}: done", file=sys.stderr)
    return download_images(server, entry, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workflow", type=Path, help="API-format workflow JSON")
    p.add_argument("--server", default="127.0.0.1:8188", help="host:port of a running ComfyUI")
    p.add_argument("--out", type=Path, default=Path("out/workflows"), help="where to put the images the graph saved")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the run")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="override an input")
    args = p.parse_args(argv)
    try:
        for path in run(args.workflow, args.server, args.out, args.timeout, args.set):
            print(path)
    except WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, InvalidWorkflow) else 1
    except urllib.error.URLError as e:
        print(f"error: cannot reach ComfyUI at {args.server}: {e.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
