"""Distribution guidance nodes inside the real ComfyUI modules (in-process): patching, cond-only edits, sampling, errors."""
import pytest
import torch

from fair_core import evaluation


@pytest.fixture(scope="module")
def setup(comfy_inprocess, tmp_path_factory):
    """The shipped model as a MODEL and a (random-weight) ADP recorded as trained on it, loaded by ADP Loader."""
    from fair_pack.fair_core import adp as adp_lib
    from fair_pack.fair_core import checkpoints
    from fair_pack.nodes import _comfy
    from fair_pack.nodes.guidance import ADPLoader

    model, ckpt = _comfy.load_model(str(evaluation.resolve_checkpoint("colored_mnist_dsm")))
    cfg = adp_lib.ADPConfig(h_shape=(64, 7, 7), timesteps=(999.0, 600.0, 200.0),
                            base_model=adp_lib.base_fingerprint(ckpt.model, "colored_mnist_dsm.safetensors"))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("adp")
    path = checkpoints.save(folder / "adp.safetensors", adp_lib.ADP(cfg), "adp", cfg)
    adp = ADPLoader.execute("unused", path=str(path)).result[0]
    return {"model": model, "adp": adp, "folder": folder, "ckpt": ckpt}


def guide(setup, reference="0.5,0.5", scale=50.0, start=0.0, end=1.0, **kw):
    from fair_pack.nodes.guidance import DistributionGuidance

    args = dict(attribute="", temperature=1.0, loss="chi2", normalize="error", head_selection="nearest") | kw
    return DistributionGuidance.execute(setup["model"], setup["adp"], reference, scale=scale, start_percent=start, end_percent=end, **args).result[0]


def apply(model, x, sigma, labels, cond_or_uncond):
    options = {**model.model_options["transformer_options"], "cond_or_uncond": cond_or_uncond, "sigmas": sigma}
    with torch.inference_mode():  # as ComfyUI's executor runs every prompt
        return model.model.apply_model(x, sigma, y=labels, transformer_options=options)


def test_guidance_edits_only_conditional_chunks_in_range(setup):
    guided = guide(setup)
    assert "output_block_patch" not in setup["model"].model_options["transformer_options"].get("patches", {}), "clone, never patch in place"
    x = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 5
    sigma, labels = torch.full((4,), 5.0), torch.tensor([3, 4, -1, -1])
    plain = apply(setup["model"], x, sigma, labels, [0, 1])

    def changed(a, b):  # per sample; the patched forward itself differs from the plain one by float rounding (~1e-6)
        return ((a - b).flatten(1).abs().max(1).values > 1e-4).tolist()

    out = apply(guided, x, sigma, labels, [0, 1])  # calc_cond_batch layout: chunk 0 = cond, chunk 1 = uncond
    assert changed(out, plain) == [True, True, False, False]
    assert changed(apply(guided, x, sigma, labels, [1, 0]), plain) == [False, False, True, True]
    late = guide(setup, start=0.9, end=1.0)  # sigma 5 is t ~ 600: outside the last 10 % of the timestep range
    assert changed(apply(late, x, sigma, labels, [0, 1]), plain) == [False] * 4


def test_guided_sampling_runs_under_inference_mode_with_cfg(setup):
    import comfy.sample

    from fair_pack.nodes import _comfy

    latent = torch.zeros(4, 3, 28, 28)
    noise = comfy.sample.prepare_noise(latent, 0)
    pos, neg = _comfy.label_conditioning([0, 1, 2, 3]), _comfy.label_conditioning([-1])

    def run(model):
        with torch.inference_mode():
            return comfy.sample.sample(model, noise, 4, 2.0, "euler", "karras", pos, neg, latent, disable_pbar=True, seed=0)

    plain, guided = run(setup["model"]), run(guide(setup))
    assert guided.shape == plain.shape and torch.isfinite(guided).all()
    assert (guided - plain).abs().max() > 1e-3


def test_bad_inputs_are_refused(setup):
    from fair_pack.fair_core import adp as adp_lib
    from fair_pack.fair_core import checkpoints
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes.guidance import ADPLoader

    with pytest.raises(FairSamplingError, match=r"reference must sum to 1, got '0.3,0.3'"):
        guide(setup, "0.3,0.3")
    assert guide(setup, "3,1", normalize="normalize") is not None
    with pytest.raises(FairSamplingError, match=r"finite and >= 0"):
        guide(setup, "-0.5,1.5")
    with pytest.raises(FairSamplingError, match=r"3 entries but the ADP predicts 2 classes \['red', 'green'\]"):
        guide(setup, "0.2,0.3,0.5")
    with pytest.raises(FairSamplingError, match=r"attribute must be one of the ADP's \['colour'\], got 'digit'"):
        guide(setup, "uniform", attribute="digit")
    other = adp_lib.ADPConfig(h_shape=(64, 7, 7), base_model={"name": "other.safetensors", "config_sha256": "0" * 64, "weights_sha256": "1" * 64})
    wrong = checkpoints.save(setup["folder"] / "other.safetensors", adp_lib.ADP(other), "adp", other)
    with pytest.raises(FairSamplingError, match=r"trained on base model 'other.safetensors' \(config_sha256"):
        guide({**setup, "adp": ADPLoader.execute("unused", path=str(wrong)).result[0]})
    small = adp_lib.ADPConfig(h_shape=(32, 14, 14))
    wrong = checkpoints.save(setup["folder"] / "small.safetensors", adp_lib.ADP(small), "adp", small)
    with pytest.raises(FairSamplingError, match=r"trained on h of shape \(32, 14, 14\).*gives \(64, 7, 7\)"):
        guide({**setup, "adp": ADPLoader.execute("unused", path=str(wrong)).result[0]})
    with pytest.raises(FairSamplingError, match=r"'dsm' checkpoint; expected kind 'adp'"):
        ADPLoader.execute("unused", path=str(evaluation.resolve_checkpoint("colored_mnist_dsm")))

    class NoMiddle(torch.nn.Module):
        middle_block = None

    class Flat:
        def get_model_object(self, name):
            return NoMiddle()

    with pytest.raises(FairSamplingError, match="needs a UNet with a middle block.*NoMiddle has none"):
        guide({**setup, "model": Flat()})


def test_adp_trainer_builds_an_adp_for_the_model_in_the_graph(setup, tmp_path):
    import folder_paths

    from fair_pack.fair_core import checkpoints
    from fair_pack.fair_core.errors import FairSamplingError
    from fair_pack.nodes import _comfy
    from fair_pack.nodes.audit import AttributeClassifierLoader
    from fair_pack.nodes.guidance import ADPTrainer

    clf = AttributeClassifierLoader.execute("eval_classifier.safetensors").result[0]
    latent = {"samples": torch.zeros(10, 3, 28, 28)}
    pos, neg = _comfy.label_conditioning(list(range(10))), _comfy.label_conditioning([-1])
    old = folder_paths.models_dir
    folder_paths.models_dir = str(tmp_path)
    try:
        with torch.inference_mode():
            adp, report, images = ADPTrainer.execute(setup["model"], pos, neg, latent, _comfy.pixel_vae(), clf, "colour", 0, 3,
                                                     "euler", "karras", 20, 0.2, "mine").result
    finally:
        folder_paths.models_dir = old
    assert adp.cfg.h_shape == (64, 7, 7) and len(adp.cfg.timesteps) == 3 and images.shape == (10, 28, 28, 3)
    assert report.startswith("ADP from 10 images (2 held out)") and "colour held-out accuracy per step" in report
    saved = checkpoints.load(tmp_path / "fair_sampling" / "mine.safetensors", kind="adp")
    assert saved.config.base_model == adp.cfg.base_model and saved.config.base_model["weights_sha256"]
    assert guide({**setup, "adp": adp}) is not None, "the in-graph ADP fits the model it was built on"
    with pytest.raises(FairSamplingError, match="called the model 5 times for 3 steps"):
        ADPTrainer.execute(setup["model"], pos, neg, latent, _comfy.pixel_vae(), clf, "colour", 0, 3, "heun", "karras", 5, 0.2, "")
