"""The CRD as kube-apiserver's own validation sees it (k8s.io/apiextensions-apiserver v0.34.4, the version of the
control plane these tests run): structural, and every CEL rule's estimated cost within budget. The Python tests only
check that iterated lists and maps are bounded; the real estimator also prices each value (an int-or-string is sized at
the 3 MB request limit), which is what sets resources' maxProperties (issue 15).

Needs the Go toolchain (as `hack/install-cluster-tools.sh`, which `make test-cluster` runs first and whose build cache
makes this build take about a minute)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "federatedtask.yaml"
MODULE = ROOT / "hack" / "cluster-tools" / "crdcheck"


@pytest.fixture(scope="module")
def crdcheck(tmp_path_factory):
    go = shutil.which("go")
    assert go, "the Go toolchain is needed to build hack/cluster-tools/crdcheck (as for hack/install-cluster-tools.sh)"
    binary = tmp_path_factory.mktemp("crdcheck") / "crdcheck"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}  # the cluster tools' flags: shared cache
    result = subprocess.run([go, "build", "-trimpath", "-o", str(binary), "."], cwd=MODULE, env=env,
                            capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, result.stderr[-3000:]
    return binary


def check(binary: Path, crd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), str(crd)], capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(900)
def test_committed_crd_is_accepted_by_kube_apiserver_validation(crdcheck):
    result = check(crdcheck, CRD)
    assert (result.returncode, result.stdout.strip()) == (0, "0 errors"), result.stdout + result.stderr


@pytest.mark.timeout(900)
def test_resources_rule_would_exceed_the_cost_budget_with_16_resources(crdcheck, tmp_path):
    # Why requests/limits allow 8 entries: with 16 each resources rule is refused (and the check can fail).
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for where in ("devices", "server", "adjustment"):
        for quantities in spec[where]["properties"]["resources"]["properties"].values():
            assert quantities["maxProperties"] == 8
            quantities["maxProperties"] = 16
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(crd))
    result = check(crdcheck, tmp_path / "crd.yaml")
    assert result.returncode == 1
    refused = [line for line in result.stdout.splitlines() if "estimated rule cost exceeds budget" in line]
    assert sorted(line.split("properties[")[2].split("]")[0] for line in refused) == [
        "adjustment", "devices", "server"], result.stdout
    # the messageExpression naming the conflicting resource (issue 15) costs about as much and is priced too
    refused = [line for line in result.stdout.splitlines() if "estimated messageExpression cost exceeds budget" in line]
    assert sorted(line.split("properties[")[2].split("]")[0] for line in refused) == [
        "adjustment", "devices", "server"], result.stdout
