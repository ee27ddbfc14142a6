"""The release workflow (.github/workflows/release.yaml), checked statically (no Docker engine here): on a version
tag it pushes exactly the images the chart and the operator default to (`<repository>:<appVersion>`), built from
Dockerfiles that exist, and the chart as an OCI artifact of the same version; its version step refuses a tag that is
not the chart's version."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from fedtask_operator.core.pods import DEFAULT_WORKER_IMAGE, WORKER_REPOSITORY
from tests.support.tools import CHART, REPO, Tools, helm_template

WORKFLOW = REPO / ".github" / "workflows" / "release.yaml"
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def steps() -> list[dict]:
    [job] = workflow()["jobs"].values()
    return job["steps"]


def version_step() -> dict:
    [step] = [s for s in steps() if s.get("id") == "version"]
    return step


def run_version_step(tag: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    output = tmp_path / "github_output"
    output.write_text("")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", version_step()["run"]], cwd=REPO, capture_output=True,
                            text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "GITHUB_REF_NAME": tag,
                                                        "GITHUB_OUTPUT": str(output)})
    return result, output.read_text()


def resolve(text: str, version: str) -> str:
    """The workflow's expressions as GitHub fills them in: env values, and the version step's output."""
    env = workflow()["env"]

    def value(match: re.Match) -> str:
        expression = match[1]
        if expression.startswith("env."):
            return env[expression.removeprefix("env.")]
        assert expression == "steps.version.outputs.version", expression
        return version
    return EXPRESSION.sub(value, text)


def test_a_version_tag_triggers_it_with_the_rights_to_push_packages():
    data = workflow()
    assert data["on"] == {"push": {"tags": ["v*"]}}
    assert data["permissions"] == {"contents": "read", "packages": "write"}


def test_the_version_step_takes_the_charts_version_and_refuses_another(tmp_path: Path):
    version = CHART_META["appVersion"]
    assert CHART_META["version"] == version, "the release tags chart and images with one version"
    result, output = run_version_step(f"v{version}", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert output == f"version={version}\n"
    result, output = run_version_step("v9.9.9", tmp_path)  # the control: a tag the chart does not carry
    assert result.returncode == 1 and output == ""
    assert f"appVersion {version}" in result.stdout, result.stdout


def test_it_pushes_the_images_the_chart_and_operator_default_to(tools: Tools):
    version = CHART_META["appVersion"]
    builds = {s["with"]["file"]: s["with"] for s in steps() if s.get("uses", "").startswith("docker/build-push-action")}
    assert set(builds) == {"operator/Dockerfile", "worker_image/Dockerfile"}
    for dockerfile, given in builds.items():
        assert (REPO / dockerfile).is_file(), dockerfile
        assert given["context"] == "." and given["push"] is True, given
        assert "linux/amd64" in given["platforms"].split(","), given
    pushed = {dockerfile: resolve(given["tags"], version) for dockerfile, given in builds.items()}

    objects = helm_template(tools)
    [deployment] = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-fedtask")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    chart_worker = {e["name"]: e.get("value") for e in container["env"]}["FEDTASK_DEFAULT_IMAGE"]
    assert pushed["operator/Dockerfile"] == container["image"] == f"{VALUES['image']['repository']}:{version}"
    assert pushed["worker_image/Dockerfile"] == chart_worker == DEFAULT_WORKER_IMAGE == f"{WORKER_REPOSITORY}:{version}"
    # the Dockerfiles build what their images are for: the operator's entrypoint, the worker's
    assert 'CMD ["operator"]' in (REPO / "operator" / "Dockerfile").read_text()
    assert "fedtask-worker" in (REPO / "worker_image" / "Dockerfile").read_text()


def test_it_pushes_the_chart_it_packages(tools: Tools, tmp_path: Path):
    [step] = [s for s in steps() if "helm push" in s.get("run", "")]
    assert step["env"]["VERSION"] == "${{ steps.version.outputs.version }}"
    registry = workflow()["env"]["CHART_REGISTRY"]
    assert registry.startswith("oci://ghcr.io/")
    # `helm package` names the archive as the push line expects
    result = subprocess.run([str(tools.helm(3)), "package", str(CHART), "--destination", str(tmp_path)],
                            capture_output=True, text=True, env=tools.helm_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    [archive] = [p.name for p in tmp_path.glob("*.tgz")]
    pushed = re.search(r'helm push "dist/([^"]+)"', step["run"])
    assert pushed and pushed[1].replace("$VERSION", CHART_META["appVersion"]) == archive, (step["run"], archive)
    assert "helm package helm/fedtask --destination dist" in step["run"]


def test_the_readme_says_how_images_are_published():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Images and releases"):]
    assert ".github/workflows/release.yaml" in section
    for repository in (VALUES["image"]["repository"], WORKER_REPOSITORY):
        assert f"`{repository}:<appVersion>`" in section, repository

