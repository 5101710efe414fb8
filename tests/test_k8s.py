"""The Kubernetes manifests: every overlay renders with kustomize, validates against the real
schemas, and agrees with batchrun's own exit codes and grace period; the parallel component makes an
Indexed Job whose pod count is set in one place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import system_tool

from batchrun import errors
from batchrun._final import FINAL_WRITE_S

K8S = Path(__file__).parent.parent / "k8s"
SINGLE = ["base", "overlays/eks-spot", "overlays/gke-spot", "overlays/s3-compatible"]
PARALLEL = ["overlays/eks-spot-parallel"]  # Indexed Jobs through components/parallel
LAYOUTS = SINGLE + PARALLEL
# Both schema versions know completionMode, backoffLimitPerIndex, maxFailedIndexes and FailIndex
# (beta and on by default from 1.29, GA in 1.33).
VERSIONS = ["1.31.0", "1.37.0"]
JOB_NAME_LABEL = "metadata.labels['batch.kubernetes.io/job-name']"


def render(layout: str | Path) -> list[dict[str, Any]]:
    kubectl = system_tool("kubectl", "renders the manifests with kustomize")
    out = subprocess.run([kubectl, "kustomize", str(K8S / layout)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def job_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    return job


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def field_refs_of(job: dict[str, Any]) -> dict[str, str]:
    """The container's env vars set from the downward API, by name: their fieldPath."""
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in env if "fieldRef" in e.get("valueFrom", {})}


def validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is a test dependency"
    return subprocess.run(
        [tool, "--strict", "--quiet", "-k", version, str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_renders_and_validates_strictly(layout: str, version: str, tmp_path: Path) -> None:
    """`kubectl kustomize` renders the layout, and every resource passes strict schema validation."""
    docs = render(layout)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Job", "ServiceAccount"]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    result = validate(rendered, version)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_a_misspelled_field(tmp_path: Path) -> None:
    """The validation step would catch a typo in the Job (so the test above means something)."""
    job = job_of(render("base"))
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(job))
    assert validate(broken, VERSIONS[0]).returncode != 0


def test_pod_failure_policy_uses_batchruns_exit_codes() -> None:
    """Disruptions, exit 143 and exit 75 (fenced) are ignored; exit 1 and 2 fail the Job at once, per errors.py."""
    rules = job_of(render("base"))["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    by_action = {r["action"]: r["onExitCodes"] for r in rules[1:]}
    assert by_action["FailJob"] == {
        "containerName": "batchrun",
        "operator": "In",
        "values": [errors.EXIT_EVAL_FAILED, errors.EXIT_BAD_INPUT],
    }
    assert by_action["Ignore"]["values"] == [errors.EXIT_SIGTERM, errors.EXIT_FENCED]
    assert errors.EXIT_STORE not in by_action["FailJob"]["values"]  # an unreachable store may come back


@pytest.mark.parametrize("layout", PARALLEL)
def test_parallel_pod_failure_policy_uses_batchruns_exit_codes(layout: str) -> None:
    """With many pods, bad input fails the Job, failed evals fail only that pod's index, SIGTERM and
    fencing are ignored, and a store outage or an internal error is counted, per errors.py.
    """
    rules = job_of(render(layout))["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    by_action = {r["action"]: r["onExitCodes"] for r in rules[1:]}
    assert len(by_action) == len(rules) - 1  # one exit-code rule per action
    assert {action: codes["values"] for action, codes in by_action.items()} == {
        "FailJob": [errors.EXIT_BAD_INPUT],
        "FailIndex": [errors.EXIT_EVAL_FAILED],
        "Ignore": [errors.EXIT_SIGTERM, errors.EXIT_FENCED],
        "Count": [errors.EXIT_STORE, errors.EXIT_INTERNAL],
    }
    assert all(codes["containerName"] == "batchrun" and codes["operator"] == "In" for codes in by_action.values())


def action_for(rules: list[dict[str, Any]], exit_code: int) -> str:
    """What Kubernetes does with a pod whose batchrun container exited *exit_code*: the first
    matching exit-code rule's action, else Count (the pod counts toward backoffLimit).
    """
    for rule in rules:
        codes = rule.get("onExitCodes")
        if codes is None or codes.get("containerName", "batchrun") != "batchrun":
            continue
        if (exit_code in codes["values"]) == (codes["operator"] == "In"):
            return str(rule["action"])
    return "Count"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_exit_code_gets_the_intended_job_action(layout: str) -> None:
    """Failed evals fail the Job (one pod) or the pod's index (many); bad input fails the Job; SIGTERM and
    fencing are free; a store outage or an internal error (70) is retried.
    """
    rules = job_of(render(layout))["spec"]["podFailurePolicy"]["rules"]
    assert action_for(rules, errors.EXIT_EVAL_FAILED) == ("FailIndex" if layout in PARALLEL else "FailJob")
    assert action_for(rules, errors.EXIT_BAD_INPUT) == "FailJob"
    assert action_for(rules, errors.EXIT_SIGTERM) == "Ignore"
    assert action_for(rules, errors.EXIT_FENCED) == "Ignore"
    assert action_for(rules, errors.EXIT_STORE) == "Count"
    assert action_for(rules, errors.EXIT_INTERNAL) == "Count"
    (counted,) = [r["onExitCodes"]["values"] for r in rules if r["action"] == "Count"]  # said, not implied
    assert counted == [errors.EXIT_STORE, errors.EXIT_INTERNAL]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_job_stops_inside_its_termination_grace(layout: str) -> None:
    """The pod's terminationGracePeriodSeconds exceeds batchrun's --grace plus the bound on the last
    sync of state folders (when the command has them) plus the bound on its final write.
    """
    job = job_of(render(layout))
    env = env_of(job)
    grace = float(env["BATCHRUN_GRACE"])
    final_sync = float(env.get("BATCHRUN_FINAL_SYNC_TIMEOUT", 20)) if "{state}" in env["BATCHRUN_COMMAND"] else 0
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + final_sync + FINAL_WRITE_S


def test_the_base_job_keeps_each_evals_results_on_the_pods_scratch_disk() -> None:
    """The record file of oaieval goes into {state}; the state root is on the writable emptyDir."""
    job = job_of(render("base"))
    env = env_of(job)
    assert "--record_path {state}/record.jsonl" in env["BATCHRUN_COMMAND"]
    assert env["BATCHRUN_STATE_ROOT"].startswith("/tmp/")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_job_is_hardened_and_wired(layout: str) -> None:
    """Non-root, read-only root, no privileges, /tmp writable, eval set and API keys mounted, progress remote."""
    docs = render(layout)
    job = job_of(docs)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["podReplacementPolicy"] == "Failed"
    assert {"activeDeadlineSeconds", "ttlSecondsAfterFinished"} <= set(spec)
    assert ("backoffLimitPerIndex" if layout in PARALLEL else "backoffLimit") in spec
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert isinstance(security["runAsUser"], int)
    assert security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= set(container["resources"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    assert volumes[mounts["/etc/batchrun"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "eval-set.yaml" in configmap["data"]
    assert container["args"][2] == "/etc/batchrun/eval-set.yaml"
    assert container["envFrom"] == [{"secretRef": {"name": "batchrun-api-keys"}}]
    assert env_of(job)["BATCHRUN_PROGRESS"].startswith(("s3://", "gs://"))
    service_account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert service_account["automountServiceAccountToken"] is False


def test_overlays_schedule_on_spot_with_workload_identity() -> None:
    """EKS: spot affinity and an IRSA role; GKE: gke-spot and Workload Identity; S3-compatible: an endpoint."""
    eks = render("overlays/eks-spot")
    eks_terms = job_of(eks)["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert {t["matchExpressions"][0]["key"] for t in eks_terms} == {
        "karpenter.sh/capacity-type",
        "eks.amazonaws.com/capacityType",
    }
    eks_sa = next(d for d in eks if d["kind"] == "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in eks_sa["metadata"]["annotations"]
    gke = render("overlays/gke-spot")
    assert job_of(gke)["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    gke_sa = next(d for d in gke if d["kind"] == "ServiceAccount")
    assert "iam.gke.io/gcp-service-account" in gke_sa["metadata"]["annotations"]
    assert env_of(job_of(gke))["BATCHRUN_PROGRESS"].startswith("gs://")
    assert env_of(job_of(render("overlays/s3-compatible")))["AWS_ENDPOINT_URL"].startswith("http")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_pod_gets_a_worker_id_its_replacement_takes_over(layout: str) -> None:
    """One pod: BATCHRUN_WORKER_ID is the Job's name. Many pods: no shared id, but JOB_NAME, so each
    pod is `<job>-<index>` and the next pod of an index takes its predecessor's id.
    """
    job = job_of(render(layout))
    refs = field_refs_of(job)
    if layout in PARALLEL:
        assert "BATCHRUN_WORKER_ID" not in env_of(job)  # one id for every pod would fence all but one
        assert refs["JOB_NAME"] == JOB_NAME_LABEL
    else:
        assert refs["BATCHRUN_WORKER_ID"] == JOB_NAME_LABEL


@pytest.mark.parametrize("layout", PARALLEL)
def test_parallel_job_keeps_the_job_apis_cross_field_rules(layout: str) -> None:
    """What the schemas can't check: an Indexed Job with completions, per-index backoff with restartPolicy
    Never, FailIndex only with backoffLimitPerIndex, no Job-wide backoffLimit, failed indexes never stop
    the others.
    """
    spec = job_of(render(layout))["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["backoffLimitPerIndex"] > 0
    assert "backoffLimit" not in spec  # it defaults to 2^31-1; 6 failures over all pods would end the run
    assert spec["podReplacementPolicy"] == "Failed"  # the only value allowed with a podFailurePolicy
    assert 1 < spec["parallelism"] == spec["completions"] == spec["maxFailedIndexes"] <= 10**5


def overlay(tmp_path: Path, **kustomization: Any) -> Path:
    """A user's overlay in *tmp_path*, naming the repository's k8s/ folders by relative path as kustomize requires."""
    k8s = os.path.relpath(K8S, tmp_path)
    text = yaml.safe_dump(kustomization).replace("K8S", k8s)
    (tmp_path / "kustomization.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "kustomization",
    [
        {"resources": ["K8S/base"], "components": ["K8S/components/parallel"]},
        {"resources": ["K8S/overlays/eks-spot-parallel"], "nameSuffix": "-2"},
    ],
    ids=["component-on-base", "on-the-example-overlay"],
)
def test_one_count_sets_parallelism_completions_and_max_failed_indexes(
    kustomization: dict[str, Any], tmp_path: Path
) -> None:
    """`replicas: [{name: batchrun, count: 13}]` in a user's overlay makes all three 13, also after a rename."""
    docs = render(overlay(tmp_path, replicas=[{"name": "batchrun", "count": 13}], **kustomization))
    spec = job_of(docs)["spec"]
    assert (spec["parallelism"], spec["completions"], spec["maxFailedIndexes"]) == (13, 13, 13)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    result = validate(rendered, VERSIONS[0])
    assert result.returncode == 0, result.stdout + result.stderr
