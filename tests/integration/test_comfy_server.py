"""The pack inside a real, headless ComfyUI server: registration, every example workflow, errors, interrupt."""
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import make_workflows  # noqa: E402
import run_workflow  # noqa: E402

NO_WORKFLOW_NODES = {"FairPromptEmbeddingBias"}  # needs CLIP weights, none offline: its graph is in docs/NODES.md
PACK_NODES = {"FairCheckpointLoader", "FairClassLabel", "FairEmptyLatent", "FairAttributeClassifierLoader", "FairnessAudit",
              "AttributeSwitchSampler", "AttributeSwitchGuider", "TransitionPointSearch", "FairADPLoader",
              "FairDistributionGuidance", "FairADPTrainer", "ConstrainedCheckpoint", "TIWScoreLoader"}
API_WORKFLOWS = sorted((REPO / "example_workflows").glob("*.api.json"))


def get(server, path):
    return json.loads(run_workflow.request(server["address"], path))


def test_every_pack_node_is_registered_with_tooltips(server):
    info = get(server, "/object_info")
    assert PACK_NODES | NO_WORKFLOW_NODES <= set(info), f"missing {(PACK_NODES | NO_WORKFLOW_NODES) - set(info)}; see {server['log']}"
    for name in PACK_NODES | NO_WORKFLOW_NODES:
        node = info[name]
        assert node["category"].startswith("sampling/fairness/"), node["category"]
        assert node["display_name"] and node["description"]
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(node["output_tooltips"]), f"{name} has an output without a tooltip"
    assert info["FairCheckpointLoader"]["input"]["required"]["ckpt_name"][1]["options"] == [
        "colored_mnist_dsm.safetensors", "colored_mnist_tiw.safetensors", "colour_cond_dsm.safetensors",
        "mnist457_dual.safetensors"]  # every diffusion kind
    assert info["ConstrainedCheckpoint"]["input"]["required"]["ckpt_name"][1]["options"] == ["mnist457_dual.safetensors"]
    assert info["TIWScoreLoader"]["input"]["required"]["ckpt_name"][1]["options"] == ["colored_mnist_tiw.safetensors"]
    assert info["FairAttributeClassifierLoader"]["input"]["required"]["classifier_name"][1]["options"] == ["eval_classifier.safetensors", "face_gender"]


def test_fairness_audit_reports_the_bias_in_the_ui_and_as_json(server, tmp_path):
    workflow = REPO / "example_workflows" / "fairness_audit.api.json"
    graph = json.loads(workflow.read_text())
    prompt_id = run_workflow.queue(server["address"], graph, "test")
    entry = run_workflow.wait(server["address"], prompt_id, timeout=300)
    audit_id = next(k for k, n in graph.items() if n["class_type"] == "FairnessAudit")
    text = entry["outputs"][audit_id]["text"][0]
    assert text.startswith("colour (n = 32): red ") and "FD " in text and "TV " in text


def test_tiw_workflow_reports_the_training_facts_and_the_colour_balance(server):
    graph = json.loads((REPO / "example_workflows" / "tiw_score_loader.api.json").read_text())
    entry = run_workflow.wait(server["address"], run_workflow.queue(server["address"], graph, "test"), timeout=300)
    facts_id = next(k for k, n in graph.items() if n["class_type"] == "PreviewAny")
    audit_id = next(k for k, n in graph.items() if n["class_type"] == "FairnessAudit")
    facts, audit = entry["outputs"][facts_id]["text"][0], entry["outputs"][audit_id]["text"][0]
    assert "reference fraction: 0.05" in facts and "colour ratio 0.9" in facts and "started from models/colored_mnist_dsm" in facts
    assert audit.startswith("colour (n = 32): red ")


def test_example_workflows_cover_every_node_and_are_current(server, tmp_path):
    used = {n["class_type"] for p in API_WORKFLOWS for n in json.loads(p.read_text()).values()}
    assert PACK_NODES <= used, f"no example workflow uses {PACK_NODES - used}"
    make_workflows.write_all(get(server, "/object_info"), tmp_path)
    for fresh in tmp_path.iterdir():
        assert json.loads(fresh.read_text()) == json.loads((REPO / "example_workflows" / fresh.name).read_text()), \
            f"{fresh.name} is stale: run python scripts/make_workflows.py --server ..."


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=[p.name for p in API_WORKFLOWS])
def test_example_workflow_runs_headless(server, workflow, tmp_path):
    """Each SaveImage of decoded generations saves one 28x28 image per latent, each SaveImage of a chart one chart."""
    graph = json.loads(workflow.read_text())
    batch = next(n["inputs"]["batch_size"] for n in graph.values() if n["class_type"] == "FairEmptyLatent")
    saves = {Path(n["inputs"]["filename_prefix"]).name: graph[n["inputs"]["images"][0]]["class_type"] == "VAEDecode"
             for n in graph.values() if n["class_type"] == "SaveImage"}
    images = run_workflow.run(workflow, server["address"], tmp_path, timeout=300, sets=[])
    assert len(images) == sum(batch if samples else 1 for samples in saves.values())
    stds = []
    for path in images:
        samples = saves[path.name.rsplit("_", 2)[0]]
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        assert pixels.shape == (28, 28, 3) if samples else pixels.shape[0] > 200
        assert pixels.max() >= 64, f"{path.name} looks blank"  # some ink (a switched digit may be dim and thin)
        stds.append(pixels.std())
    assert np.mean(stds) > 20, "the saved images look blank"


def test_a_bad_graph_gets_node_errors(server):
    graph = json.loads((REPO / "example_workflows" / "fair_checkpoint_loader.api.json").read_text())
    loader = next(k for k, n in graph.items() if n["class_type"] == "FairCheckpointLoader")
    sampler = next(k for k, n in graph.items() if n["class_type"] == "KSampler")
    graph[sampler]["inputs"]["positive"] = [loader, 0]  # a MODEL where CONDITIONING belongs
    with pytest.raises(run_workflow.InvalidWorkflow, match=f"node {sampler} \\(KSampler\\): Return type mismatch"):
        run_workflow.queue(server["address"], graph, "test")


@pytest.mark.parametrize("inputs, message", [
    ({"path": str(REPO / "models" / "eval_classifier.safetensors")}, "eval_classifier.safetensors' is a 'classifier' checkpoint; expected kind"),
    ({"ckpt_name": "missing.safetensors"}, "ckpt_name 'missing.safetensors' is not in the 'fair_sampling' model folders"),
])
def test_a_wrong_checkpoint_fails_with_a_clear_message(server, inputs, message):
    graph = json.loads((REPO / "example_workflows" / "fair_checkpoint_loader.api.json").read_text())
    loader = next(k for k, n in graph.items() if n["class_type"] == "FairCheckpointLoader")
    graph[loader]["inputs"].update(inputs)
    prompt_id = run_workflow.queue(server["address"], graph, "test")
    with pytest.raises(run_workflow.WorkflowError, match=f"FairCheckpointLoader: .*{message}"):
        run_workflow.wait(server["address"], prompt_id, timeout=120)


def test_interrupt_stops_a_long_run(server):
    graph = json.loads((REPO / "example_workflows" / "fair_checkpoint_loader.api.json").read_text())
    sampler = next(k for k, n in graph.items() if n["class_type"] == "KSampler")
    graph[sampler]["inputs"].update(steps=5000, seed=123)
    prompt_id = run_workflow.queue(server["address"], graph, "test")
    deadline = time.monotonic() + 60
    while not get(server, "/queue")["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(3)  # sampling is under way (model loaded, steps running)
    start = time.monotonic()
    run_workflow.request(server["address"], "/interrupt", {})
    while get(server, "/queue")["queue_running"]:
        assert time.monotonic() - start < 10, "the run did not stop within 10 s of POST /interrupt"
        time.sleep(0.1)
    status = get(server, f"/history/{prompt_id}")[prompt_id]["status"]
    assert any(m[0] == "execution_interrupted" for m in status["messages"]), status


def test_ksampler_in_comfyui_draws_what_fair_core_draws(server, tmp_path):
    """Same seed, sampler and schedule: ComfyUI's KSampler on our MODEL reproduces ``fair_core.sampling.generate``
    (ComfyUI snaps sigma to the nearest timestep where we interpolate: a pixel level or two apart)."""
    import torch

    from fair_core import checkpoints, evaluation
    from fair_core.imageio import to_uint8
    from fair_core.sampling import generate

    workflow = REPO / "example_workflows" / "fair_checkpoint_loader.api.json"
    graph = json.loads(workflow.read_text())
    ks = next(n["inputs"] for n in graph.values() if n["class_type"] == "KSampler")
    assert (ks["sampler_name"], ks["scheduler"], ks["cfg"]) == ("dpmpp_2m", "karras", 1.0)
    theirs = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(run_workflow.run(workflow, server["address"], tmp_path, 300, []))])
    model = checkpoints.load(evaluation.resolve_checkpoint("colored_mnist_dsm")).model.eval()
    ours = to_uint8(generate(model, len(theirs), ks["steps"], sampler="dpmpp_2m", schedule="karras",
                             class_labels=torch.arange(len(theirs)) % 10, seed=ks["seed"], disable=True))
    diff = np.abs(ours.astype(float) - theirs.astype(float))
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())
