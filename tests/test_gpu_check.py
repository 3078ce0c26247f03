"""`make gpu-check DRY=1`: the one-command GPU check runs end to end on the CPU with tiny sizes,
so the script cannot rot between GPU runs. Every part runs its real commands (pytest -m cuda,
bench/unet.py beside diffusers, bench/pipeline.py, SynthFaces + `t2i train all --max-steps` +
`t2i generate`, torchrun with a resume); what needs CUDA is reported as not run."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_part(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--results-dir", str(results),
         "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=580,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((results / "gpu_check_dry_run.json").read_text())
    assert report["dry_run"] is True and report["environment"]["gpu"] is None
    parts = report["parts"]
    assert list(parts) == ["cuda-tests", "unet-bench", "pipeline", "celeba128", "torchrun"]

    # 1. the CUDA tests are collected and skip cleanly without a GPU
    tests = parts["cuda-tests"]["details"]["tests"]
    assert parts["cuda-tests"]["status"] == "not run (no CUDA)"
    assert len(tests) >= 13 and all(t["outcome"] == "skipped" for t in tests)
    names = {t["name"].split("[")[0] for t in tests}
    assert {"test_every_stage_trains_under_autocast", "test_fp16_overflow_is_skipped_once_and_the_scale_is_checkpointed",
            "test_unet_resume_is_bitwise_exact_with_deterministic_algorithms", "test_compiled_training_matches_eager",
            "test_cuda_graph_sampling_matches_eager", "test_pipeline_bf16_output_is_close_to_fp32"} <= names

    # 2. t2i's UNet beside diffusers', eager (compiled + CUDA graphs need CUDA)
    unet = parts["unet-bench"]
    assert unet["status"].startswith("passed") and unet["details"]["compiled"] == "not run (no CUDA)"
    rows = {r["model"]: r for r in unet["details"]["rows"]}
    assert set(rows) == {"diffusers-baseline", "t2i-equal"}
    assert all(r["train_img_per_s"] > 0 and r["sample_ms_per_step_b1"] > 0 for r in rows.values())
    assert unet["details"]["train_speedup_vs_diffusers_eager"] > 0

    # 3. the pipeline end to end, randomly initialised and said so
    (pipe,) = parts["pipeline"]["details"]["models"].values()
    assert pipe["random_init"] and "randomly initialised" in pipe["model"]
    assert {r["batch"] for r in pipe["rows"]} == {1, 2} and all(r["seconds_per_image"] > 0 for r in pipe["rows"])

    # 4. every stage of a preset on SynthFaces with the step override, then generate, then the projection
    recipe = parts["celeba128"]
    assert recipe["status"] == "passed", recipe
    stages = recipe["details"]["stages"]
    assert {n: s.get("measured_steps") for n, s in stages.items() if n != "encode"} == \
        {"vae": 3, "clip": 3, "unet": 3, "judge": 3}
    assert stages["encode"]["projected_s"] > stages["encode"]["measured_s"]
    assert recipe["details"]["generated_images"] == 4 and recipe["details"]["generated_size"] == [32, 32]
    assert recipe["details"]["projected_hours"] > 0

    # 5. the UNet stage under torchrun (gloo on the CPU), resumed from its own checkpoint
    torchrun = parts["torchrun"]
    assert torchrun["status"] == "passed", torchrun
    assert [r["backend"] for r in torchrun["details"]["runs"]] == ["gloo", "gloo"]
    assert torchrun["details"]["second_run"]["resumed_from"] == 2

    md = (results / "gpu_check_dry_run.md").read_text()
    assert "| 4. celeba128 recipe on SynthFaces | passed |" in md and "## UNet (bench/unet.py)" in md
    assert "gpu-check on the CPU, dry run" in proc.stdout and "5/5" not in proc.stdout  # part 1 did not run
    assert "===== torchrun.log" in (results / "gpu_check_dry_run.log").read_text()
