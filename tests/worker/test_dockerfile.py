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


USER_DOCKERFILE = DOCKERFILE.parents[1] / "examples" / "friedman.Dockerfile"


def test_the_documented_user_image_builds_from_the_default_worker_image_and_passes_hadolint():
    from fedtask_operator.kube.cli import DEFAULT_IMAGE

    hadolint = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
    process = subprocess.run([hadolint, str(USER_DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stdout + process.stderr
    lines = [line for line in USER_DOCKERFILE.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == f"FROM {DEFAULT_IMAGE}"
    copied = [line.split()[1] for line in lines if line.startswith("COPY ")]
    assert copied and all((USER_DOCKERFILE.parent / name).is_file() for name in copied)
    assert "ENV PYTHONPATH=/opt/fedtask-user" in lines and lines[-1] == "USER 10001:10001"
    readme = (DOCKERFILE.parents[1] / "README.md").read_text()
    assert "\n".join(lines) in readme  # the README shows this very file
