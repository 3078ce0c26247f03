"""The web demo offers attribute helpers only for models whose data has attributes, and then
only the attributes that data varies (as model_index.json records them)."""

import json
import shutil

import pytest

pytest.importorskip("gradio")

from tiny_model import tiny_model_fixture  # noqa: E402


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory, synth_dir):
    """The shared tiny model, copied so that its model_index.json can be rewritten."""
    src = tiny_model_fixture(tmp_path_factory, synth_dir)
    dst = tmp_path_factory.mktemp("attr_model") / "model"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "latents"))
    return dst


def page(model, attributes):
    """(component types with their labels and choices, API endpoint names) of the app for
    `model` with model_index.json recording `attributes` (no file for None)."""
    from t2i.app.server import create_app

    index = model / "model_index.json"
    index.unlink(missing_ok=True)
    if attributes is not None:
        index.write_text(json.dumps({"format": "t2i-model", "attributes": attributes}))
    demo, _ = create_app(model, device="cpu")
    config = demo.get_config_file()
    components = [(c["type"], c["props"].get("label"), c["props"].get("visible", True),
                   [v for _, v in c["props"].get("choices") or []]) for c in config["components"]]
    api = {fn.api_name for fn in demo.fns.values() if fn.api_name}
    return components, api


def test_caption_only_model_shows_no_attribute_helpers(model_copy):
    components, api = page(model_copy, [])
    types = [c[0] for c in components]
    assert "checkboxgroup" not in types and "radio" not in types and "accordion" not in types
    assert "compose_prompt" not in api and "generate" in api  # the API has no attribute endpoint either


def test_attribute_model_offers_only_what_its_data_varies(model_copy):
    components, api = page(model_copy, ["Smiling", "Eyeglasses", "Male"])
    groups = {label: choices for kind, label, _, choices in components if kind == "checkboxgroup"}
    assert groups == {"Has": ["Eyeglasses", "Smiling"], "Explicitly without": ["Eyeglasses", "Smiling"]}
    radios = {label: visible for kind, label, visible, _ in components if kind == "radio"}
    assert radios == {"Sex": True, "Age": False}  # Young does not vary: no age choice
    assert "compose_prompt" in api

    # Nothing recorded (a model trained stage by stage): every captioned attribute is offered.
    components, _ = page(model_copy, None)
    groups = {label: choices for kind, label, _, choices in components if kind == "checkboxgroup"}
    assert len(groups["Has"]) > 15


def test_compose_refuses_what_the_model_was_not_trained_to_tell(model_copy):
    from t2i.app.server import create_app

    (model_copy / "model_index.json").write_text(json.dumps({"attributes": ["Smiling"]}))
    demo, _ = create_app(model_copy, device="cpu")
    compose = next(fn.fn for fn in demo.fns.values() if fn.api_name == "compose_prompt")
    assert "smil" in compose("any", "any", ["Smiling"], [])
    import gradio as gr

    with pytest.raises(gr.Error, match="sex"):
        compose("man", "any", [], [])
    with pytest.raises(gr.Error, match="Eyeglasses"):
        compose("any", "any", ["Eyeglasses"], [])
