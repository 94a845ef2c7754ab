"""The pack as ComfyUI sees it, checked without ComfyUI: imports, layout rules, example workflows."""
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_workflows  # noqa: E402


def test_the_pack_imports_outside_comfyui():
    spec = importlib.util.spec_from_file_location("pack_outside_comfy", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    assert inspect.iscoroutinefunction(pack.comfy_entrypoint)
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS"), "V1 mappings would hide the V3 nodes (ComfyUI checks them first)"


@pytest.mark.parametrize("folder", ["fair_core", "training"])
def test_library_code_never_imports_comfyui_or_the_nodes(folder):
    pattern = re.compile(r"^\s*(import|from)\s+(comfy|comfy_api|comfy_extras|folder_paths|nodes)\b|^\s*from\s+\.\.?nodes\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders


def test_nodes_import_the_library_relatively():
    """Inside ComfyUI the pack is a package named after its folder: absolute ``import fair_core`` would fail."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "nodes").rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+(fair_core|training)\b", p.read_text(), re.M)]
    assert not offenders


API = sorted((ROOT / "example_workflows").glob("*.api.json"))


def test_every_graph_is_written_in_both_formats():
    assert {p.name for p in API} == {f"{name}.api.json" for name in make_workflows.GRAPHS}
    for name, (_, graph) in make_workflows.GRAPHS.items():
        assert json.loads((ROOT / "example_workflows" / f"{name}.api.json").read_text()) == make_workflows.api_format(graph)


@pytest.mark.parametrize("api_path", API, ids=[p.name for p in API])
def test_ui_twin_matches_the_api_graph(api_path):
    """Same nodes, the same links (source node and slot per input) and every literal input among the widget values."""
    api = json.loads(api_path.read_text())
    ui = json.loads(api_path.with_name(api_path.name.replace(".api.json", ".json")).read_text())
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert {k: v["class_type"] for k, v in api.items()} == {k: n["type"] for k, n in nodes.items()}
    links = {link[0]: link for link in ui["links"]}
    for node_id, node in api.items():
        linked = {i["name"]: links[i["link"]] for i in nodes[node_id]["inputs"] if i["link"] is not None}
        for name, value in node["inputs"].items():
            if make_workflows.is_link(value):
                assert (str(linked[name][1]), linked[name][2], str(linked[name][3])) == (value[0], value[1], node_id), (node_id, name)
            else:
                assert value in nodes[node_id]["widgets_values"], (node_id, name, value)
        assert len(linked) == sum(make_workflows.is_link(v) for v in node["inputs"].values())


def test_workflows_use_only_the_shipped_model():
    for path in API:
        for node in json.loads(path.read_text()).values():
            if node["class_type"] == "FairCheckpointLoader":
                assert (ROOT / "models" / node["inputs"]["ckpt_name"]).is_file() and node["inputs"]["path"] == ""
