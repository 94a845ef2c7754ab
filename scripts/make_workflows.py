#!/usr/bin/env python3
"""Write ``example_workflows/``: each example graph in API format (``NAME.api.json``, for headless runs) and UI
format (``NAME.json``, shown by ComfyUI as a template), from the API graphs below.

The UI format needs each node's inputs and outputs as ComfyUI declares them, read from a running ComfyUI:

    python scripts/make_workflows.py --server 127.0.0.1:8188          # or --object-info object_info.json

Standard library only. The integration tests regenerate the UI files against the real ComfyUI and compare.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "example_workflows"
DEFAULT = "colored_mnist_dsm.safetensors"


COLOUR = "colour_cond_dsm.safetensors"  # shipped colour-conditional model: label 0 = red, 1 = green
DUAL = "mnist457_dual.safetensors"  # shipped dual-trained grey MNIST model (digits 4, 5, 7 kept at 10 %), unconditional
TIW = "colored_mnist_tiw.safetensors"  # shipped TIW-DSM model: the default fine-tuned with a 5 % balanced reference set


def _loader(ckpt=DEFAULT):
    return {"class_type": "FairCheckpointLoader", "inputs": {"ckpt_name": ckpt, "path": "", "weight_dtype": "default"}}


def _labels(text):
    return {"class_type": "FairClassLabel", "inputs": {"labels": text}}


def _decode_and_save(samples, vae, prefix):
    return {"decode": {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": vae}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}}


def _digits_with_ksampler(batch_size, loader=None):
    """Shipped model (or ``loader``), one label per digit cycled over the batch, KSampler dpmpp_2m / karras, 20 steps, seed 0."""
    return {
        "loader": loader or _loader(),
        "digits": _labels("0,1,2,3,4,5,6,7,8,9"),
        "null": _labels("-1"),
        "latent": {"class_type": "FairEmptyLatent", "inputs": {"model": ["loader", 0], "batch_size": batch_size}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["loader", 0], "seed": 0, "steps": 20, "cfg": 1.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "positive": ["digits", 0], "negative": ["null", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
    }


def _colour_switch_inputs(batch_size):
    """The colour-conditional model, red (s0) and green (s1) labels, the null label as negative, a pixel latent."""
    return {"loader": _loader(COLOUR), "red": _labels("0"), "green": _labels("1"), "null": _labels("-1"),
            "latent": {"class_type": "FairEmptyLatent", "inputs": {"model": ["loader", 0], "batch_size": batch_size}}}


def _audited(attribute, target, prefix):
    """Decode the sampler's batch, save it, and audit ``attribute`` against ``target`` with the shipped classifier (chart saved)."""
    return {
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["loader", 1]}},
        "classifier": {"class_type": "FairAttributeClassifierLoader", "inputs": {"classifier_name": "eval_classifier.safetensors", "path": ""}},
        "audit": {"class_type": "FairnessAudit", "inputs": {
            "images": ["decode", 0], "classifier": ["classifier", 0], "attribute": attribute, "target": target, "n_boot": 1000}},
        "save_audit": {"class_type": "SaveImage", "inputs": {"images": ["audit", 2], "filename_prefix": f"fair_sampling/{prefix}_audit"}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"fair_sampling/{prefix}"}},
    }


_CONDS = {"positive_s0": ["red", 0], "positive_s1": ["green", 0], "negative": ["null", 0]}

_DG = {"reference": "uniform", "attribute": "digit", "scale": 300.0, "start_percent": 0.0, "end_percent": 1.0, "temperature": 1.0,
       "loss": "chi2", "normalize": "error", "head_selection": "nearest"}  # Distribution Guidance settings of the examples


def _unconditional_batch(model, batch_size):
    """``batch_size`` unconditional images (the null label -1) from ``model`` with KSampler dpmpp_2m / karras, 20 steps."""
    return {
        "null": _labels("-1"),
        "latent": {"class_type": "FairEmptyLatent", "inputs": {"model": ["loader", 0], "batch_size": batch_size}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 0, "steps": 20, "cfg": 1.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "positive": ["null", 0], "negative": ["null", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
    }


# name -> (title, API graph with readable node ids; they are renumbered 1..n on output)
GRAPHS = {
    "fair_checkpoint_loader": ("Shipped Colored-MNIST model with KSampler: one image per digit", {
        **_digits_with_ksampler(10),
        **_decode_and_save(["sampler", 0], ["loader", 1], "fair_sampling/checkpoint_loader"),
    }),
    "class_label_cfg": ("One digit with classifier-free guidance through SamplerCustomAdvanced", {
        "loader": _loader(),
        "seven": _labels("7"),
        "null": _labels("-1"),
        "latent": {"class_type": "FairEmptyLatent", "inputs": {"model": ["loader", 0], "batch_size": 8}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["loader", 0], "positive": ["seven", 0], "negative": ["null", 0], "cfg": 2.0}},
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["loader", 0], "scheduler": "karras", "steps": 20, "denoise": 1.0}},
        "sampler": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}},
        **_decode_and_save(["sampler", 0], ["loader", 1], "fair_sampling/class_label_cfg"),
    }),
    "fairness_audit": ("Audit the colour balance of 32 generated digits: proportions with 95% intervals, FD, TV", {
        **_digits_with_ksampler(32),
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["loader", 1]}},
        "classifier": {"class_type": "FairAttributeClassifierLoader", "inputs": {"classifier_name": "eval_classifier.safetensors", "path": ""}},
        "audit": {"class_type": "FairnessAudit", "inputs": {
            "images": ["decode", 0], "classifier": ["classifier", 0], "attribute": "colour", "target": "0.5,0.5", "n_boot": 1000}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["audit", 2], "filename_prefix": "fair_sampling/fairness_audit"}},
    }),
    "attribute_switch_sampler": ("Attribute switching: red until the searched tau, then green (and the reverse for half the batch)", {
        **_colour_switch_inputs(16),
        "sampler": {"class_type": "AttributeSwitchSampler", "inputs": {
            "model": ["loader", 0], "seed": 0, "steps": 20, "cfg": 1.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", **_CONDS,
            "latent_image": ["latent", 0], "tau_mode": "auto", "tau": 0.5, "direction": "alternate", "search_batch": 16}},
        **_decode_and_save(["sampler", 0], ["loader", 1], "fair_sampling/attribute_switch_sampler"),
    }),
    "attribute_switch_guider": ("Transition point search (curve) feeding an Attribute Switch Guider in SamplerCustomAdvanced", {
        **_colour_switch_inputs(16),
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["loader", 0], "scheduler": "karras", "steps": 20, "denoise": 1.0}},
        "search": {"class_type": "TransitionPointSearch", "inputs": {
            "model": ["loader", 0], **_CONDS, "cfg": 1.0, "sampler": ["select", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["latent", 0], "seed": 0, "search_batch": 16, "weighting": "beta"}},
        "guider": {"class_type": "AttributeSwitchGuider", "inputs": {
            "model": ["loader", 0], **_CONDS, "cfg": 1.0, "switch_sigma": ["search", 0], "direction": "alternate"}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "sampler": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}},
        "curve": {"class_type": "SaveImage", "inputs": {"images": ["search", 2], "filename_prefix": "fair_sampling/tau_curve"}},
        **_decode_and_save(["sampler", 0], ["loader", 1], "fair_sampling/attribute_switch_guider"),
    }),
    "distribution_guidance": ("Distribution guidance in h-space: unconditional digits guided to a uniform digit distribution, audited", {
        "loader": _loader(),
        "adp": {"class_type": "FairADPLoader", "inputs": {"adp_name": "colored_mnist_adp.safetensors", "path": ""}},
        "guide": {"class_type": "FairDistributionGuidance", "inputs": {**_DG, "model": ["loader", 0], "adp": ["adp", 0]}},
        **_unconditional_batch(["guide", 0], 64),
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["loader", 1]}},
        "classifier": {"class_type": "FairAttributeClassifierLoader", "inputs": {"classifier_name": "eval_classifier.safetensors", "path": ""}},
        "audit": {"class_type": "FairnessAudit", "inputs": {
            "images": ["decode", 0], "classifier": ["classifier", 0], "attribute": "digit", "target": "", "n_boot": 1000}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["audit", 2], "filename_prefix": "fair_sampling/distribution_guidance_audit"}},
    }),
    "adp_trainer": ("ADP Trainer: build an ADP for the model in the graph from a generated batch and classifier labels, then guide", {
        "loader": _loader(),
        "all": _labels("-1"),
        "train_latent": {"class_type": "FairEmptyLatent", "inputs": {"model": ["loader", 0], "batch_size": 64}},
        "classifier": {"class_type": "FairAttributeClassifierLoader", "inputs": {"classifier_name": "eval_classifier.safetensors", "path": ""}},
        "trainer": {"class_type": "FairADPTrainer", "inputs": {
            "model": ["loader", 0], "positive": ["all", 0], "negative": ["all", 0], "latent_image": ["train_latent", 0],
            "vae": ["loader", 1], "classifier": ["classifier", 0], "attribute": "digit", "seed": 1, "steps": 20,
            "sampler_name": "dpmpp_2m", "scheduler": "karras", "train_steps": 300, "holdout": 0.2, "save_as": ""}},
        "guide": {"class_type": "FairDistributionGuidance", "inputs": {**_DG, "model": ["loader", 0], "adp": ["trainer", 0]}},
        **_unconditional_batch(["guide", 0], 64),
        **_decode_and_save(["sampler", 0], ["loader", 1], "fair_sampling/adp_trainer"),
    }),
    "tiw_score_loader": ("TIW Score Loader: the default model fine-tuned by TIW-DSM with a 5 % balanced reference set, its "
                         "training facts and a colour audit of 32 digits", {
        **_digits_with_ksampler(32, {"class_type": "TIWScoreLoader", "inputs": {"ckpt_name": TIW, "path": "", "weight_dtype": "default"}}),
        "facts": {"class_type": "PreviewAny", "inputs": {"source": ["loader", 2]}},
        **_audited("colour", "0.5,0.5", "tiw_score_loader"),
    }),
    "constrained_checkpoint": ("Constrained Checkpoint: the dual-trained grey MNIST model (4, 5, 7 kept at 10 %), its constraint "
                               "report and a digit audit of 64 samples", {
        "loader": {"class_type": "ConstrainedCheckpoint", "inputs": {"ckpt_name": DUAL, "path": "", "weight_dtype": "default"}},
        **_unconditional_batch(["loader", 0], 64),
        "report": {"class_type": "PreviewAny", "inputs": {"source": ["loader", 2]}},
        **_audited("digit", "", "constrained_checkpoint"),
    }),
}


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def api_format(graph: dict) -> dict:
    """Renumber node ids 1..n (ComfyUI's convention) and rewrite links accordingly."""
    ids = {name: str(i) for i, name in enumerate(graph, 1)}
    return {ids[name]: {"class_type": node["class_type"], "_meta": {"title": name},
                        "inputs": {k: [ids[v[0]], v[1]] if is_link(v) else v for k, v in node["inputs"].items()}}
            for name, node in graph.items()}


def declared_inputs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) in ComfyUI's declared order; type is 'COMBO' for option lists."""
    out = []
    for section in ("required", "optional"):
        spec = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(spec)):
            kind, opts = spec[name][0], (spec[name][1] if len(spec[name]) > 1 else {})
            out.append((name, "COMBO" if isinstance(kind, list) else kind, opts))
    return out


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def depth(api: dict) -> dict[str, int]:
    memo: dict[str, int] = {}

    def d(node_id):
        if node_id not in memo:
            parents = [v[0] for v in api[node_id]["inputs"].values() if is_link(v)]
            memo[node_id] = 1 + max((d(p) for p in parents), default=-1)
        return memo[node_id]

    for node_id in api:
        d(node_id)
    return memo


def ui_format(api: dict, object_info: dict) -> dict:
    """The UI (LiteGraph) twin of an API graph: nodes with slots and widget values, links, simple column layout."""
    missing = sorted({n["class_type"] for n in api.values()} - set(object_info))
    if missing:
        raise SystemExit(f"object_info lacks node types {missing}: is the pack installed in that ComfyUI?")
    links, nodes, out_links = [], [], {}
    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            if is_link(value):
                src, slot = value
                link_id = len(links) + 1
                links.append([link_id, int(src), slot, int(node_id), None, object_info[api[src]["class_type"]]["output"][slot]])
                out_links.setdefault((src, slot), []).append(link_id)
    columns, rows = depth(api), {}
    for node_id, node in api.items():
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, kind, opts in declared_inputs(info):
            value = node["inputs"].get(name)
            if is_link(value):
                link = next(l for l in links if l[3] == int(node_id) and l[1] == int(value[0]) and l[2] == value[1] and l[4] is None)
                link[4] = len(inputs)
                inputs.append({"name": name, "type": kind, "link": link[0]})
            elif kind in WIDGET_TYPES:
                widgets.append(value if value is not None else opts.get("default"))
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": kind, "link": None})
        outputs = [{"name": name, "type": kind, "links": out_links.get((node_id, i), []), "slot_index": i}
                   for i, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
        col = columns[node_id]
        row = rows[col] = rows.get(col, -1) + 1
        nodes.append({"id": int(node_id), "type": node["class_type"], "pos": [40 + 330 * col, 40 + 200 * row], "size": [300, 150],
                      "flags": {}, "order": 0, "mode": 0, "title": node["_meta"]["title"], "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets})
    for order, node in enumerate(sorted(nodes, key=lambda n: (columns[str(n["id"])], n["id"]))):
        node["order"] = order
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_all(object_info: dict, out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, graph) in GRAPHS.items():
        api = api_format(graph)
        ui = ui_format(api, object_info)
        ui["extra"]["info"] = {"title": title}
        for path, data in ((out / f"{name}.api.json", api), (out / f"{name}.json", ui)):
            write_json(path, data)
            written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", help="host:port of a running ComfyUI with the pack installed")
    src.add_argument("--object-info", type=Path, help="a saved GET /object_info response")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.server:
        with urllib.request.urlopen(f"http://{args.server}/object_info", timeout=60) as r:
            info = json.loads(r.read())
    else:
        info = json.loads(args.object_info.read_text())
    for path in write_all(info, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
