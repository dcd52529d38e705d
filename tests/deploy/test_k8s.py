"""deploy/k8s: rendered offline, validated strictly, and checked against regions/.

Each region's overlay is rendered with kustomize (``kubectl kustomize``; no
cluster involved) and every object is validated against the Kubernetes
schemas in strict mode (``kubernetes-validate``: unknown fields are errors).
Then the manifests are read against the regions file: one overlay per region,
ports and addresses as the regions file says, and a NetworkPolicy that lets a
region's pods reach nothing but their own database and OpenBao, the control
plane, DNS and the other regions' endpoints.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from vault.config import RegionsConfig, load_regions

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: The oldest Kubernetes release the manifests are validated against.
KUBERNETES_VERSION = "1.30"

sys.path.insert(0, str(K8S))
import render_regions  # noqa: E402

KUBECTL = shutil.which("kubectl")


def _regions() -> RegionsConfig:
    return load_regions(ROOT / "regions" / "regions.yaml", data_dir="/d", openbao_addr="http://b")


def _deployed_regions() -> RegionsConfig:
    return load_regions(K8S / "base" / "regions.yaml")


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    assert parts.hostname and parts.port, address
    return parts.hostname, parts.port


def test_the_configmaps_regions_file_is_generated_from_regions() -> None:
    assert (K8S / "base" / "regions.yaml").read_text() == render_regions.render(), (
        "deploy/k8s/base/regions.yaml is out of date: run deploy/k8s/render_regions.py"
    )


def test_the_deployed_regions_are_the_regions_with_production_addresses() -> None:
    source, deployed = _regions(), _deployed_regions()
    assert list(deployed.regions) == list(source.regions)
    for rid, r in source.regions.items():
        d = deployed.regions[rid]
        assert (d.name, d.jurisdiction, d.transit_mounts, d.node_identity) == (
            r.name,
            r.jurisdiction,
            r.transit_mounts,
            r.node_identity,
        )
        assert d.database_url.startswith("postgresql+psycopg://")
        assert d.openbao_address.startswith("https://")  # OpenBao over TLS only
        assert (
            "@" not in d.database_url.split("//")[1].split("@")[0] + "@x"
            or ":" not in (d.database_url.split("//")[1].split("@")[0])
        ), "no password in the regions file"
    assert deployed.transfers == source.transfers
    assert deployed.default_region == source.default_region
    for country in ("DE", "NO", "US", "CN", "RU", "SG", "BR"):
        assert deployed.region_for(country) == source.region_for(country)
    assert deployed.control.transit_mount == source.control.transit_mount
    assert deployed.control.openbao_address.startswith("https://")


def test_render_regions_refuses_a_region_without_a_site(tmp_path: Path) -> None:
    sites = yaml.safe_load((K8S / "sites.yaml").read_text())
    del sites["regions"]["ru"]
    f = tmp_path / "sites.yaml"
    f.write_text(yaml.safe_dump(sites))
    with pytest.raises(SystemExit, match="regions"):
        render_regions.render(sites_file=f)


def test_every_region_has_an_overlay_and_nothing_else_does() -> None:
    overlays = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
    assert overlays == sorted(_regions().regions)


@dataclass
class Rendered:
    region: str
    objects: list[dict[str, Any]]

    def one(self, kind: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"{kind}: {len(found)}"
        return found[0]


def _render(region: str) -> Rendered:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: no kustomize to render deploy/k8s with")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / region)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return Rendered(region, [o for o in yaml.safe_load_all(out.stdout) if o])


@pytest.fixture(scope="module", params=["cn", "us", "de", "ru", "sg"])
def rendered(request: pytest.FixtureRequest) -> Iterator[Rendered]:
    yield _render(request.param)


def test_every_object_validates_strictly(rendered: Rendered) -> None:
    kinds = sorted(o["kind"] for o in rendered.objects)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    for obj in rendered.objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _container(r: Rendered) -> dict[str, Any]:
    containers = r.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def test_the_nodes_serve_their_region_on_its_endpoint(rendered: Rendered) -> None:
    region = _deployed_regions().regions[rendered.region]
    _, port = _host_port(region.endpoint)
    c = _container(rendered)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PDVAULT_REGION"] == rendered.region
    args = c["args"]
    assert args[:3] == ["serve", "--region", "$(PDVAULT_REGION)"]
    assert "--port" not in args  # the port of the region's endpoint, by construction
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("grpc", port)]
    service = rendered.one("Service")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "grpc")]
    # Mutual TLS towards callers and peers, AppRole towards OpenBao: no token.
    for flag in ("--tls-cert", "--tls-client-ca", "--peer-cert", "--openbao-role-id-file"):
        assert flag in args
    assert not any("token" in a for a in args)
    assert not any(e["name"] in ("BAO_TOKEN", "BAO_ERASER_TOKEN") for e in c["env"])


def test_the_probes_check_grpc_health_on_the_nodes_port(rendered: Rendered) -> None:
    _, port = _host_port(_deployed_regions().regions[rendered.region].endpoint)
    c = _container(rendered)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[:4] == ["pdvault", "health", "--target", f"grpcs://127.0.0.1:{port}"]
        assert "--cert" in command and "--key" in command  # mutual TLS
        assert c[probe]["timeoutSeconds"] >= 3


def test_the_pods_run_unprivileged_on_a_read_only_root(rendered: Rendered) -> None:
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    c = _container(rendered)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]


def test_config_and_secrets_are_referenced_not_embedded(rendered: Rendered) -> None:
    configmap = rendered.one("ConfigMap")
    assert configmap["data"]["regions.yaml"] == (K8S / "base" / "regions.yaml").read_text()
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    assert secrets == {
        "pdvault-openbao-approle",
        "pdvault-eraser-approle",
        "pdvault-server-tls",
        "pdvault-clients-ca",
        "pdvault-peer-tls",
        "pdvault-openbao-ca",
    }
    assert [s["secret"]["name"] for s in volumes["data"]["projected"]["sources"]] == [
        "pdvault-data"
    ]
    assert not any(o["kind"] == "Secret" for o in rendered.objects)


def test_the_budget_and_the_autoscaler_keep_the_region_served(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment")["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == f"pdvault-{rendered.region}"
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    service = rendered.one("Service")["spec"]
    assert service["selector"].items() <= labels.items()
    pdb = rendered.one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = rendered.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == rendered.one("Deployment")["metadata"]["name"]
    assert hpa["minReplicas"] > pdb["maxUnavailable"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]


def _rules(rendered: Rendered) -> list[tuple[list[dict[str, Any]], set[tuple[int, str]]]]:
    spec = rendered.one("NetworkPolicy")["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    out = []
    for rule in spec["egress"]:
        assert rule.get("to"), "an egress rule without destinations allows everything"
        assert rule.get("ports"), "an egress rule without ports allows every port"
        out.append((rule["to"], {(p["port"], p["protocol"]) for p in rule["ports"]}))
    return out


def test_the_network_policy_allows_exactly_the_regions_dependencies(rendered: Rendered) -> None:
    regions = _deployed_regions()
    me = regions.regions[rendered.region]
    labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    policy = rendered.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    _, my_port = _host_port(me.endpoint)
    assert [p["port"] for r in policy["ingress"] for p in r["ports"]] == [my_port]

    external: dict[str, set[tuple[int, str]]] = {}
    in_cluster: dict[str, set[tuple[int, str]]] = {}
    for to, ports in _rules(rendered):
        for peer in to:
            if "ipBlock" in peer:
                cidr = peer["ipBlock"]["cidr"]
                assert ipaddress.ip_network(cidr).num_addresses == 1, cidr
                assert not peer["ipBlock"].get("except")
                external.setdefault(cidr.removesuffix("/32"), set()).update(ports)
            else:
                ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                app = peer["podSelector"]["matchLabels"]
                in_cluster.setdefault(f"{ns}/{next(iter(app.values()))}", set()).update(ports)

    expected_external: dict[str, set[tuple[int, str]]] = {}
    for rid, r in regions.regions.items():
        if rid != rendered.region:
            host, port = _host_port(r.endpoint)
            expected_external.setdefault(host, set()).add((port, "TCP"))
    for address in (regions.control.openbao_address, regions.control.database_url):
        host, port = _host_port(address)
        expected_external.setdefault(host, set()).add((port, "TCP"))
    assert external == expected_external
    assert _host_port(me.endpoint)[0] not in external  # its own endpoint is not a peer

    _, db_port = _host_port(me.database_url)
    _, bao_port = _host_port(me.openbao_address)
    assert in_cluster == {
        "kube-system/kube-dns": {(53, "UDP"), (53, "TCP")},
        "pdvault-db/postgresql": {(db_port, "TCP")},
        "openbao/openbao": {(bao_port, "TCP")},
    }
    # The in-cluster names of the regions file are those services.
    assert _host_port(me.database_url)[0].split(".")[1] == "pdvault-db"
    assert _host_port(me.openbao_address)[0].split(".")[1] == "openbao"
