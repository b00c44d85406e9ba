"""deploy/kubernetes agrees with Kubernetes and with the code: every manifest the kustomization lists
is valid against the Kubernetes API's schemas (kubernetes-validate's offline copies, strict: no
unknown field), and the pieces fit: the commands exist, every reference (config map, secret, volume
claim, scale target, service selector) names something defined, the settings are Switchyard's, and
KEDA scales the workers on the step queue's list.

No cluster and no kustomize binary here: the kustomization's resources are read with PyYAML.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes these manifests are for
CRDS = {("keda.sh/v1alpha1", "ScaledObject")}  # custom resources: checked by hand below


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((BASE / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def resources(kustomization) -> list[dict]:
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((BASE / name).read_text()) if doc]


def named(resources: list[dict], kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def containers(resources: list[dict]) -> list[dict]:
    pods = [r["spec"]["template"]["spec"] for r in resources if r["kind"] in ("Deployment", "Job")]
    return [c for pod in pods for c in pod["containers"]]


def test_the_kustomization_lists_every_manifest_of_the_folder(kustomization):
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert kustomization["kind"] == "Kustomization" and kustomization["images"][0]["name"] == "switchyard"


def test_every_manifest_is_valid_against_the_kubernetes_schemas(resources):
    checked = 0
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{resource['kind']} {resource['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 12


def test_the_production_shape_is_there(resources):
    deployments = named(resources, "Deployment")
    assert set(deployments) == {"switchyard-api", "switchyard-scheduler", "switchyard-worker", "switchyard-flower"}
    assert set(named(resources, "Job")) == {"switchyard-migrations"}
    hpa = named(resources, "HorizontalPodAutoscaler")["switchyard-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    assert deployments["switchyard-scheduler"]["spec"]["replicas"] >= 2
    assert deployments["switchyard-worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_keda_scales_the_workers_on_the_step_queue(resources):
    scaled = named(resources, "ScaledObject")["switchyard-worker"]
    worker = named(resources, "Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    assert worker["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == Settings().default_queue
    assert int(trigger["metadata"]["listLength"]) > 0
    env = {e["name"] for c in worker["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    assert trigger["metadata"]["addressFromEnv"] in env
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]


def test_every_reference_names_something_defined(resources):
    config_maps, secrets = named(resources, "ConfigMap"), named(resources, "Secret")
    claims = named(resources, "PersistentVolumeClaim")
    for container in containers(resources):
        for source in container["envFrom"]:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps
            else:
                assert source["secretRef"]["name"] in secrets
    for r in resources:
        if r["kind"] in ("Deployment", "Job"):
            for volume in r["spec"]["template"]["spec"].get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
    pod_labels = [r["spec"]["template"]["metadata"]["labels"] for r in named(resources, "Deployment").values()]
    for service in named(resources, "Service").values():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), service["metadata"]["name"]


def test_the_settings_given_are_switchyards(resources):
    fields = set(Settings.model_fields)
    given = [key for cm in named(resources, "ConfigMap").values() for key in cm["data"]]
    given += [key for s in named(resources, "Secret").values() for key in s["stringData"]]
    given += [e["name"] for c in containers(resources) for e in c.get("env", []) if e["name"].startswith("SWITCHYARD_")]
    assert {"SWITCHYARD_DATABASE_URL", "SWITCHYARD_BROKER_URL", "SWITCHYARD_SECRET_KEY"} <= set(given)
    unknown = [key for key in given if key.removeprefix("SWITCHYARD_").lower() not in fields]
    assert unknown == [], f"not settings of orchestrator/settings.py: {unknown}"


def test_every_command_exists(resources):
    commands = [c["command"] for c in containers(resources)]
    assert len(commands) == 5
    for command in commands:
        if command[0] == "switchyard":
            found = main
            for word in command[1:]:
                if word.startswith("-") or not isinstance(found, click.Group):
                    break
                found = found.commands.get(word)
                assert found is not None, f"`{' '.join(command)}`: no such switchyard command"
        else:
            assert command[:2] == ["celery", "--app"]
            assert importlib.util.find_spec(command[2]) is not None, command
