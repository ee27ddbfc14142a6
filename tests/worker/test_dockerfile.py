"""The worker Dockerfile cannot be built here; lint it and check the properties the issue asks for."""
import pathlib
import shutil
import subprocess
import sys

DOCKERFILE = pathlib.Path(__file__).resolve().parents[2] / "worker_image" / "Dockerfile"


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
    process = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stdout + process.stderr


def test_plain_slim_non_root_cpu_by_default():
    text = DOCKERFILE.read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert "slim" in text and "ARG TORCH_VARIANT=cpu" in text
    assert "USER 10001" in final_stage and "pip install" not in final_stage  # no build tools in the final stage
    assert 'ENTRYPOINT ["fedtask-worker"]' in final_stage
