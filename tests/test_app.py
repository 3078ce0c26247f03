"""The web app's API, through gradio_client against a real `t2i serve` subprocess: streamed
frames, final images, clear errors for bad fields, odd prompts, and more requests at once than
the server takes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from t2i.app.limits import GenerationRequest, Limits, RequestError, clean_text, validate_request
from t2i.prompt_syntax import parse_prompt

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import tiny_model_fixture  # noqa: E402

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

ENTRY = "import sys; from t2i.cli import main; sys.exit(main(sys.argv[1:]))"
QUEUE_SIZE = 3


@pytest.fixture(scope="session")
def app_model(tmp_path_factory, synth_dir):
    return tiny_model_fixture(tmp_path_factory, synth_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`t2i serve` on a free localhost port; returns once the page answers."""
    port = free_port()
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                        "GRADIO_TEMP_DIR": str(log_path.parent / "gradio_tmp"), "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "serve", "--model", str(model), "--port", str(port), *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, url, log_path, "t2i serve")
    return proc, url


def wait_until_serving(proc: subprocess.Popen, url: str, log_path: Path, what: str) -> None:
    """Return once `url` answers 200; fail with the server log if it exits or takes > 3 min."""
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not answer in time:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(app_model, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, url = start_server(app_model, log_path, "--max-steps", "50", "--max-images", "4",
                             "--max-prompt-chars", "300", "--concurrency", "1", "--queue-size", str(QUEUE_SIZE))
    yield proc, url, log_path
    stop_server(proc)


def test_serve_listens_on_localhost_only_by_default(server):
    import psutil

    proc, _, _ = server
    listening = [c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and set(listening) == {"127.0.0.1"}, listening


@pytest.fixture
def client(server, tmp_path):
    _, url, _ = server
    return gradio_client.Client(url, verbose=False, download_files=str(tmp_path), analytics_enabled=False)


def request(prompt="a photo of a smiling woman with blond hair", **kw):
    return dict(prompt=prompt, negative_prompt="", steps=4, guidance=3.0, sampler="dpm++2m", seed=0,
                random_seed=False, num_images=1) | kw


def image_size(model: Path) -> int:
    from t2i.pipeline import T2IPipeline

    return T2IPipeline.from_pretrained(model, device="cpu").image_size


# -- validation, no server ------------------------------------------------------------------------


def test_validation_names_the_field_and_cleans_prompts():
    limits = Limits(max_steps=50, max_images=4, max_prompt_chars=300)
    r = validate_request(limits, " a  bald\tman\n\x07with ｇｌａｓｓｅｓ\u200b\u202e 🙂 ", steps=10.0, seed=5,
                         num_images=2)
    assert r == GenerationRequest("a bald man with glasses 🙂", "", 10, 3.0, "euler-a", 5, 2)
    assert clean_text("caf\u0065\u0301 \ud800x", "prompt", 50) == "café x"  # NFKC; lone surrogate dropped
    cases = [
        (dict(steps=51), "steps must be an integer in \\[1, 50\\], got 51"),
        (dict(steps=2.5), "steps"),
        (dict(steps=True), "steps"),
        (dict(guidance=float("inf")), "guidance"),
        (dict(guidance=-1), "guidance"),
        (dict(sampler="plms"), "unknown sampler 'plms'"),
        (dict(num_images=0), "number of images"),
        (dict(seed=2**31), "seed"),
        (dict(prompt="x" * 100_000), "prompt is 100,000 characters long; the limit is 300"),
        (dict(prompt="\x00\x01 \u200b"), "prompt is empty"),
        (dict(negative_prompt="n" * 301), "negative prompt is 301 characters"),
    ]
    for kw, message in cases:
        args = dict(prompt="a man") | kw
        with pytest.raises(RequestError, match=message):
            validate_request(limits, **args)
    assert len({validate_request(limits, "a man", seed=0, random_seed=True).seed for _ in range(5)}) > 1
    assert 0 <= validate_request(limits, "a man", seed=-1).seed <= 2**31 - 1


def test_compose_prompt_uses_the_training_vocabulary():
    from t2i.app.compose import compose_prompt
    from t2i.data.captions import caption_mentions

    text = compose_prompt("woman", "young", ["Smiling", "Blond_Hair", "Eyeglasses"], ["Wearing_Hat"])
    # What is ruled out is a NOT term of its own (obeyed far more often than "without a hat").
    described, denied = parse_prompt(text).terms
    assert caption_mentions(described.text) == {"Male": False, "Young": True, "Smiling": True,
                                                "Blond_Hair": True, "Eyeglasses": True}
    assert caption_mentions(denied.text) == {"Wearing_Hat": True} and denied.weight == -0.5
    assert text == described.text + " AND NOT a photo of a person wearing a hat :0.5"
    # Ticked and ruled out counts as ticked: a plain prompt, sampled as one.
    assert parse_prompt(compose_prompt("woman", "any", ["Eyeglasses"], ["Eyeglasses"])).is_plain
    assert caption_mentions(compose_prompt("man", "any", ["No_Beard"])) == {"Male": True, "No_Beard": False}
    with pytest.raises(RequestError, match="unknown attribute"):
        compose_prompt(present=["../../etc/passwd"])
    with pytest.raises(RequestError, match="cannot be negated"):
        compose_prompt(absent=["Black_Hair"])


# -- the API --------------------------------------------------------------------------------------


def test_generate_streams_frames_then_final_images(client, app_model):
    job = client.submit(**request(steps=24, num_images=2, seed=3), api_name="/generate")
    outputs = list(job)
    preview, gallery, info, warnings = job.result(timeout=120)
    assert warnings == []  # every word of the prompt is one the model was trained on
    assert len(outputs) > 1, outputs  # frames were streamed before the result
    frames = [o[0] for o in outputs[:-1]]
    assert all(f and Path(f).is_file() for f in frames)
    assert "step " in outputs[0][2]
    size = image_size(app_model)
    assert len(gallery) == 2
    for k, item in enumerate(gallery):
        with Image.open(item["image"]) as im:
            im.load()
            assert im.size == (size, size)
            # The served PNG carries its settings, like `t2i generate`'s files.
            assert im.text["prompt"] == "a photo of a smiling woman with blond hair"
            assert (im.text["seed"], im.text["steps"], im.text["sampler"]) == (str(3 + k), "24", "dpm++2m")
    with Image.open(preview) as im:
        assert im.size[1] == size and im.size[0] > 2 * size  # both images, side by side
    assert "per image" in info and "dpm++2m" in info and "seed 3" in info


def test_readme_example_needs_only_the_prompt(client):
    # README's snippet: every other input has a default, so the API does not require it.
    outputs = list(client.submit("a bald man with a mustache", api_name="/generate"))
    preview, gallery, info, warnings = outputs[-1]
    assert len(outputs) > 1 and len(gallery) >= 1 and "per image" in info


def test_unseen_words_are_named_in_the_page_and_as_a_structured_api_warning(client, app_model):
    from t2i.vocabulary import Vocabulary

    vocab = Vocabulary.load(app_model)
    job = client.submit(**request("a smiling woman in a sombrero, smilling", negative_prompt="zebra", steps=2),
                        api_name="/generate")
    outputs = list(job)
    preview, gallery, info, warnings = job.result(timeout=120)
    assert len(gallery) == 1
    unseen = [w for w in warnings if w["kind"] == "unseen_words"]
    assert [(w["field"], [x["word"] for x in w["words"]]) for w in unseen] == [
        ("prompt", ["sombrero", "smilling"]), ("negative_prompt", ["zebra"])]
    assert unseen[0]["words"] == [{"word": "sombrero", "suggestion": vocab.suggest("sombrero")},
                                  {"word": "smilling", "suggestion": "smiling"}]
    # The page says it too, from the first streamed frame on, naming the words.
    assert '"sombrero"' in outputs[0][2] and '"smilling" (try "smiling")' in info
    assert 'negative prompt: the model never saw the word "zebra"' in info


def test_same_seed_same_images(client):
    a = client.predict(**request(seed=42), api_name="/generate")[1][0]["image"]
    b = client.predict(**request(seed=42), api_name="/generate")[1][0]["image"]
    with Image.open(a) as ia, Image.open(b) as ib:
        assert ia.tobytes() == ib.tobytes()


@pytest.mark.parametrize("kw, message", [
    (dict(steps=1000), "steps must be an integer in [1, 50], got 1000"),
    (dict(prompt="a" * 100_000), "prompt is 100,000 characters long; the limit is 300"),
    (dict(num_images=9), "number of images must be an integer in [1, 4]"),
    (dict(guidance=1e9), "guidance must be a number in [0, 20]"),
    (dict(seed=-5, random_seed=False, prompt="   "), "prompt is empty"),
    (dict(prompt="a man AND"), "prompt: empty term after 'AND' at column 7"),
])
def test_bad_requests_get_a_clear_error_not_a_hang(client, app_model, kw, message):
    t0 = time.perf_counter()
    job = client.submit(**request(**kw), api_name="/generate")
    with pytest.raises(Exception) as info:
        job.result(timeout=60)
    text = str(info.value)
    assert message in text
    assert str(app_model) not in text and "Traceback" not in text and "/tmp" not in text
    assert time.perf_counter() - t0 < 60


def test_composed_prompts_through_the_api(client):
    composed = "a smiling woman AND wearing eyeglasses AND NOT a hat :0.5"
    preview, gallery, info, warnings = client.predict(**request(composed, steps=2, num_images=2), api_name="/generate")
    assert len(gallery) == 2
    with Image.open(gallery[0]["image"]) as im:
        assert im.text["prompt"] == composed  # the PNG records the request as typed
    assert "3 terms" in info


def test_odd_prompts_work(client):
    odd = [
        "a smiling woman 👩‍🦰 with glasses 🤓",
        "一个戴眼镜的微笑女人",
        "مرأة مبتسمة \u202eRTL override\u202c",
        "tab\there\nnew line\r\nand \x00 NUL \x1b[2J ANSI \x7f DEL",
        "zero\u200bwidth \ufeffBOM and \U000f0000 private use",
        "<script>alert(1)</script> & ' \" `code` **bold**",
    ]
    for prompt in odd:
        preview, gallery, info, warnings = client.predict(**request(prompt, steps=2), api_name="/generate")
        assert len(gallery) == 1 and Path(gallery[0]["image"]).is_file(), prompt
        assert "<script>" not in info
        with Image.open(gallery[0]["image"]) as im:
            used = im.text["prompt"]  # what the model was given, as recorded in the PNG
        assert used and not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u200b\u202e\ufeff" for c in used), used


def test_raw_json_with_a_lone_surrogate(server):
    """A hostile client can send what gradio_client cannot encode: a lone UTF-16 surrogate
    (valid JSON, invalid Unicode). It is dropped from the prompt and the image is made."""
    _, url, _ = server
    body = (b'{"data": ["a smiling man \\ud83d with glasses", "", 2, 3, "ddim", 1, false, 1]}')
    req = urllib.request.Request(f"{url}/gradio_api/call/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{url}/gradio_api/call/generate/{event_id}", timeout=120) as r:
        stream = r.read().decode()
    assert "event: complete" in stream and "event: error" not in stream, stream[-1000:]


CONCURRENCY = 1  # the server fixture's --concurrency
N_REQUESTS = 12  # three times what the server takes (1 running + QUEUE_SIZE waiting)


def readme_client_loop(client, prompt: str, **kw):
    """The README's client pattern, as written there: stream the updates, then the result."""
    job = client.submit(prompt, api_name="/generate", **kw)
    for preview, gallery, status, warnings in job:  # noqa: B007 (as the README writes it)
        print(status)  # "step 7/20 · 0.3 s", ..., then the summary
    preview, gallery, status, warnings = job.result()  # raises the server's message if it refused
    return gallery


def test_more_requests_than_the_server_takes_are_refused_at_once(server, tmp_path):
    """12 clients at once, each following the README's loop, against 1 running + 3 waiting: at
    most 4 are accepted and make their images, every other one leaves its loop at once with
    the busy message (before, with gradio's own queue limit, the refused loops never ended)."""
    import psutil

    proc, url, log_path = server
    server_ps = psutil.Process(proc.pid)
    rss_before = server_ps.memory_info().rss
    peak = [rss_before]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], server_ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    clients = [gradio_client.Client(url, verbose=False, download_files=str(tmp_path / f"c{i}"),
                                    analytics_enabled=False) for i in range(N_REQUESTS)]
    start = threading.Barrier(N_REQUESTS)
    results: dict[int, tuple] = {}

    def one(i: int):
        start.wait()
        t0 = time.perf_counter()
        try:  # long jobs (50 steps x 4 images), so every request arrives while the first runs
            gallery = readme_client_loop(clients[i], f"a photo of person number {i}", steps=50, num_images=4,
                                         seed=i, random_seed=False)
            results[i] = ("done", len(gallery), time.perf_counter() - t0)
        except Exception as e:  # the refusal, raised by job.result() after the loop ended
            results[i] = ("refused", f"{type(e).__name__}: {e}", time.perf_counter() - t0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(N_REQUESTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 150
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    watcher.join()
    hanging = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not hanging, f"{len(hanging)} clients still inside the README's loop after 150 s; finished: {results}"

    done = [r for r in results.values() if r[0] == "done"]
    refused = [r for r in results.values() if r[0] == "refused"]
    assert len(done) + len(refused) == N_REQUESTS
    assert 1 <= len(done) <= CONCURRENCY + QUEUE_SIZE, results
    assert all(r[1] == 4 for r in done), results
    for r in refused:  # a clear busy answer that came at once, not after waiting for a turn
        assert f"busy: {CONCURRENCY} job(s) running and {QUEUE_SIZE} waiting" in r[1], r
        assert r[2] < min(d[2] for d in done), (r, done)
    assert proc.poll() is None, log_path.read_text()[-2000:]  # still up, and still serving:
    check = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "after"), analytics_enabled=False)
    assert len(check.predict(**request(steps=2), api_name="/generate")[1]) == 1
    growth = (peak[0] - rss_before) / 2**20
    print(f"\n{N_REQUESTS} concurrent requests (concurrency {CONCURRENCY}, queue {QUEUE_SIZE}): {len(done)} done, "
          f"{len(refused)} refused as busy after at most {max(r[2] for r in refused):.2f} s; server RSS before "
          f"{rss_before / 2**20:.0f} MiB, peak {peak[0] / 2**20:.0f} MiB (+{growth:.0f} MiB); "
          f"slowest request {max(r[2] for r in done):.1f} s")
    assert growth < 500, f"server RSS grew by {growth:.0f} MiB under {N_REQUESTS} requests"


def test_space_entry_point_builds_the_same_app(app_model, monkeypatch):
    import runpy

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("T2I_MODEL_DIR", str(app_model))
    monkeypatch.setenv("T2I_MAX_STEPS", "12")
    ns = runpy.run_path(str(root / "app.py"))  # not __main__: builds, does not launch
    demo, kwargs = ns["demo"], ns["launch_kwargs"]
    api = {d.api_name for d in demo.fns.values() if d.api_name}
    assert "generate" in api
    assert ns["limits_from_env"]().max_steps == 12
    assert kwargs["show_error"] is False and "server_name" not in kwargs  # gradio's default host: localhost
    with pytest.raises(SystemExit, match="T2I_QUEUE_SIZE must be an integer"):
        ns["limits_from_env"]({"T2I_QUEUE_SIZE": "lots"})


def test_truncation_note_for_prompts_longer_than_the_context(app_model):
    from t2i.app.stream import truncation_note
    from t2i.pipeline import T2IPipeline

    pipe = T2IPipeline.from_pretrained(app_model, device="cpu")
    assert truncation_note(pipe, "a photo of a man") is None
    note = truncation_note(pipe, " ".join(["a smiling man with glasses"] * 40))
    context = pipe.text_encoder.tokenizer.context_length
    assert note is not None and f"reads only the first {context - 2}" in note


def test_model_attributes_reads_only_the_model_dirs_own_index(tmp_path):
    from t2i.app.server import model_attributes

    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"attributes": ["Smiling", "Male"]}))
    assert model_attributes(model) == ["Smiling", "Male"]
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({"attributes": ["Bald"]}))
    (model / "model_index.json").unlink()
    (model / "model_index.json").symlink_to(outside)
    assert model_attributes(model) is None  # not followed out of the model dir
