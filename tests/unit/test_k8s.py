"""deploy/k8s/: valid Kubernetes objects that say what tickvault needs (no cluster here).

Every object but the KEDA ScaledObject is checked against the Kubernetes API schema in strict
mode (kubernetes_validate: unknown fields fail); the ScaledObject, a CRD it does not know, against
the spec KEDA documents (https://keda.sh/docs/2.15/reference/scaledobject-spec/ and
https://keda.sh/docs/2.15/scalers/redis-streams/). Then what ties the objects to tickvault: each
Deployment's config file loads as tickvault loads it, probes and the Service use the port given
to ``--metrics-port``, each producer shard has its own ``producer.name`` and spill volume, the
consumers know every shard's feeds and KEDA measures each of their streams, the pods run as the
image's user. Each check is a function; ``test_a_broken_manifest_fails_its_check`` breaks a
copy of the manifests one way at a time and expects the matching check to fail.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import msgspec
import pytest
import yaml

from common.config import Settings, settings_from_mapping
from common.envelope import raw_key
from common.errors import ConfigError
from common.redis_url import redis_options

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
# The oldest Kubernetes the manifests are meant for, and the newest kubernetes_validate knows.
KUBERNETES = ("1.30.0", kubernetes_validate.latest_version())

Obj = dict[str, Any]

# From KEDA's ScaledObject spec and redis-streams trigger pages (URLs in the module docstring).
KEDA_API = "keda.sh/v1alpha1"
KEDA_SPEC_KEYS = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
KEDA_TARGET_KEYS = {"apiVersion", "kind", "name", "envSourceContainerName"}
KEDA_TRIGGER_KEYS = {
    "type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics",
}  # fmt: skip
REDIS_STREAMS_KEYS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
    "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount",
    "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl", "databaseIndex",
}  # fmt: skip


# -- reading the manifests ---------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_objects() -> list[Obj]:
    objects: list[Obj] = []
    for path in manifest_files():
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return objects


@pytest.fixture
def objects() -> list[Obj]:
    return load_objects()


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} object(s)"
    return found[0]


def container(deployment: Obj, name: str | None = None) -> Obj:
    containers: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    if name is None:
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def role(deployment: Obj) -> str:
    """``producer`` or ``consumer``: the subcommand its first container runs."""
    command: list[str] = container(deployment)["command"]
    assert command[0] == "tickvault", f"{deployment['metadata']['name']}: {command}"
    return command[1]


def deployments(objects: list[Obj], which: str) -> list[Obj]:
    return [d for d in of_kind(objects, "Deployment") if role(d) == which]


def option(command: list[str], flag: str) -> str:
    assert flag in command, f"no {flag} in {command}"
    return command[command.index(flag) + 1]


def port_number(c: Obj, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    assert port in by_name, f"container {c['name']} has no port named {port!r}"
    return int(by_name[port])


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is read here: {selector}"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def pod_labels(deployment: Obj) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def secret_value(objects: list[Obj], name: str, key: str) -> str:
    secret = named(objects, "Secret", name)
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    assert key in secret.get("data", {}), f"Secret {name} has no key {key!r}"
    return base64.b64decode(secret["data"][key]).decode()


def environment(objects: list[Obj], c: Obj) -> dict[str, str]:
    """The container's env, Secret references resolved (a missing Secret key fails)."""
    env = {}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_value(objects, ref["name"], ref["key"])
    return env


def config_file(objects: list[Obj], deployment: Obj) -> tuple[str, str]:
    """(ConfigMap key, its text) of the file the container's ``--config`` names."""
    c = container(deployment)
    path = option(c["command"], "--config")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for mount in c.get("volumeMounts", []):
        directory = mount["mountPath"].rstrip("/") + "/"
        if mount.get("subPath") and mount["mountPath"] == path:
            relative = mount["subPath"]
        elif not mount.get("subPath") and path.startswith(directory):
            relative = path.removeprefix(directory)
        else:
            continue
        source = volumes[mount["name"]].get("configMap")
        assert source is not None, f"{path} is not mounted from a ConfigMap"
        items = {i["path"]: i["key"] for i in source.get("items", [])}
        key = items.get(relative, relative) if items else relative
        data = named(objects, "ConfigMap", source["name"]).get("data", {})
        assert key in data, f"ConfigMap {source['name']} has no key {key!r} (for {path})"
        return key, str(data[key])
    raise AssertionError(f"{deployment['metadata']['name']}: nothing mounted at {path}")


def settings_of(objects: list[Obj], deployment: Obj) -> Settings:
    """The settings the Deployment's process would load: its file plus its environment."""
    _, text = config_file(objects, deployment)
    return settings_from_mapping(tomllib.loads(text), environment(objects, container(deployment)))


def feed_keys(settings: Settings) -> list[str]:
    return sorted(msgspec.json.encode(f).decode() for f in settings.feeds)


def dockerfile_uid() -> int:
    m = re.search(r"useradd .*--uid (\d+)", (DEPLOY / "Dockerfile").read_text())
    assert m is not None, "no useradd --uid in deploy/Dockerfile"
    return int(m.group(1))


# -- the checks --------------------------------------------------------------------------------


def check_schemas(objects: list[Obj]) -> None:
    for obj in objects:
        assert "namespace" not in obj["metadata"], f"{obj['metadata']['name']} names a namespace"
        if obj["apiVersion"] == KEDA_API:
            continue  # a CRD: check_scaled_object
        for version in KUBERNETES:
            kubernetes_validate.validate(obj, version, strict=True)


def check_scaled_object(objects: list[Obj]) -> None:
    (scaled,) = of_kind(objects, "ScaledObject")
    assert scaled["apiVersion"] == KEDA_API
    spec = scaled["spec"]
    assert set(spec) <= KEDA_SPEC_KEYS, f"unknown ScaledObject keys {set(spec) - KEDA_SPEC_KEYS}"
    target = spec["scaleTargetRef"]
    assert set(target) <= KEDA_TARGET_KEYS
    assert target.get("kind", "Deployment") == "Deployment"
    consumer = named(objects, "Deployment", target["name"])
    assert role(consumer) == "consumer", f"KEDA scales {target['name']}, not the consumers"
    low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
    assert 1 <= low == consumer["spec"]["replicas"] <= high, (low, consumer["spec"]["replicas"])
    settings = settings_of(objects, consumer)
    env = environment(objects, container(consumer, target.get("envSourceContainerName")))
    streams = []
    for trigger in spec["triggers"]:
        assert set(trigger) <= KEDA_TRIGGER_KEYS, f"unknown trigger keys {set(trigger)}"
        assert trigger["type"] == "redis-streams", trigger["type"]
        meta = trigger["metadata"]
        assert set(meta) <= REDIS_STREAMS_KEYS, f"unknown metadata {set(meta) - REDIS_STREAMS_KEYS}"
        assert all(isinstance(v, str) for v in meta.values()), (
            f"metadata values are strings: {meta}"
        )
        missing = {"stream", "consumerGroup", "lagCount", "activationLagCount"} - set(meta)
        assert not missing, f"trigger {meta.get('stream')} lacks {missing}"
        assert {"address", "addressFromEnv", "host", "hostFromEnv"} & set(meta), "no Redis address"
        assert int(meta["lagCount"]) > 0 and int(meta["activationLagCount"]) >= 0
        assert meta["consumerGroup"] == settings.consumer.group, meta["consumerGroup"]
        for key in {"addressFromEnv", "hostFromEnv", "portFromEnv", "usernameFromEnv",
                    "passwordFromEnv"} & set(meta):  # fmt: skip
            assert meta[key] in env, f"{key}: the consumer has no env {meta[key]}"
        streams.append(meta["stream"])
    expected = sorted(raw_key(e) for e in settings.exchanges)
    assert sorted(streams) == expected, f"triggers on {sorted(streams)}, consumers read {expected}"


def check_configs(objects: list[Obj]) -> None:
    for deployment in of_kind(objects, "Deployment"):
        settings_of(objects, deployment)  # loads, or ConfigError names the key
    (consumer,) = deployments(objects, "consumer")
    consumed = feed_keys(settings_of(objects, consumer))
    shards = [settings_of(objects, p) for p in deployments(objects, "producer")]
    produced = sorted(f for shard in shards for f in feed_keys(shard))
    collected = [
        (feed.exchange, channel, symbol)
        for shard in shards
        for feed in shard.feeds
        for channel in feed.channels
        for symbol in feed.symbols
    ]
    assert len(set(collected)) == len(collected), "two shards collect the same feed"
    assert consumed == produced, f"consumers' feeds {consumed} != the shards' {produced}"


def check_probes(objects: list[Obj]) -> None:
    for deployment in of_kind(objects, "Deployment"):
        c = container(deployment)
        port = int(option(c["command"], "--metrics-port"))
        assert {"name": "metrics", "containerPort": port} in c["ports"], c["ports"]
        paths = {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for probe, path in paths.items():
            get = c[probe]["httpGet"]
            assert get["path"] == path, f"{c['name']} {probe} on {get['path']}"
            assert port_number(c, get["port"]) == port, f"{c['name']} {probe} on {get['port']}"


def check_service(objects: list[Obj]) -> None:
    (service,) = of_kind(objects, "Service")
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    (svc_port,) = service["spec"]["ports"]
    assert annotations["prometheus.io/port"] == str(svc_port["port"])
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(deployment)), name
        c = container(deployment)
        port = int(option(c["command"], "--metrics-port"))
        assert port_number(c, svc_port["targetPort"]) == port, f"{name} is scraped on another port"


def check_selectors(objects: list[Obj]) -> None:
    """Each Deployment's selector picks its own pods and no other Deployment's."""
    all_deployments = of_kind(objects, "Deployment")
    for d in all_deployments:
        picked = [
            o["metadata"]["name"]
            for o in all_deployments
            if selects(d["spec"]["selector"], pod_labels(o))
        ]
        assert picked == [d["metadata"]["name"]], f"{d['metadata']['name']} selects {picked}"


def check_producers(objects: list[Obj]) -> None:
    producers = deployments(objects, "producer")
    assert producers, "no producer Deployment"
    names, claims = [], []
    for deployment in producers:
        spec = deployment["spec"]
        who = deployment["metadata"]["name"]
        assert spec["replicas"] == 1, f"{who}: a shard runs one producer"
        assert spec["strategy"] == {"type": "Recreate"}, f"{who}: two producers of a shard ran"
        settings = settings_of(objects, deployment)
        assert settings.producer.name, f"{who}: producer.name unset (the pod's name changes)"
        names.append(settings.producer.name)
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        spill = settings.producer.spill_dir
        assert spill in mounts, f"{who}: the spill dir {spill} is not a volume"
        claim = volumes[mounts[spill]].get("persistentVolumeClaim")
        assert claim is not None, f"{who}: the spill dir is not on a PersistentVolumeClaim"
        claims.append(claim["claimName"])
        pvc = named(objects, "PersistentVolumeClaim", claim["claimName"])
        size = pvc["spec"]["resources"]["requests"]["storage"]
        assert re.fullmatch(r"\d+Gi", size), size
        assert int(size[:-2]) << 30 > settings.producer.spill_max_bytes, f"{who}: {size} too small"
    assert len(set(names)) == len(names), f"producer.name shared by shards: {names}"
    assert len(set(claims)) == len(claims), f"spill claim shared by shards: {claims}"


def check_consumers(objects: list[Obj]) -> None:
    (consumer,) = deployments(objects, "consumer")
    spec = consumer["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    (pdb,) = of_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"], pod_labels(consumer)), "the PDB misses the consumers"
    for producer in deployments(objects, "producer"):
        name = producer["metadata"]["name"]
        assert not selects(pdb["spec"]["selector"], pod_labels(producer)), f"PDB holds {name}"


def check_pods(objects: list[Obj]) -> None:
    """Non-root as the image's user, read-only root, a grace period above the stop budget."""
    uid = dockerfile_uid()
    for deployment in of_kind(objects, "Deployment"):
        who = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        settings = settings_of(objects, deployment)
        budget = getattr(settings, role(deployment)).stop_timeout_s
        grace = pod["terminationGracePeriodSeconds"]
        assert grace == 30 and grace >= budget + 5, f"{who}: grace {grace}, stop budget {budget}"
        for c in pod["containers"]:
            security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            assert security["runAsNonRoot"] is True, who
            assert security.get("runAsUser") == uid, f"{who}: runs as {security.get('runAsUser')}"
            assert security["readOnlyRootFilesystem"] is True, who
            assert security["allowPrivilegeEscalation"] is False, who
            assert c["resources"]["requests"] and c["resources"]["limits"], who
            env = environment(objects, c)
            assert "TICKVAULT_REDIS_URL" in env, f"{who} has no TICKVAULT_REDIS_URL"
            database = "TICKVAULT_DATABASE_URL" in env
            assert database == (role(deployment) == "consumer"), f"{who}: database URL {database}"


def check_secret(objects: list[Obj]) -> None:
    """KEDA's host:port, password and database are the ones in tickvault's redis URL."""
    (scaled,) = of_kind(objects, "ScaledObject")
    consumer = named(objects, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    env = environment(objects, container(consumer))
    url = redis_options(env["TICKVAULT_REDIS_URL"])
    assert url.path is None, "KEDA's redis-streams scaler cannot reach a unix socket"
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        address = meta.get("address") or env[meta["addressFromEnv"]]
        assert address == f"{url.host}:{url.port}", f"KEDA reads {address}, tickvault {url.where}"
        assert int(meta.get("databaseIndex", "0")) == url.db, "KEDA reads another database"
        assert meta.get("enableTLS", "false") == ("true" if url.tls else "false")
        password = env[meta["passwordFromEnv"]] if "passwordFromEnv" in meta else None
        assert password == url.password, "KEDA's password is not the one in redis-url"
        username = env[meta["usernameFromEnv"]] if "usernameFromEnv" in meta else None
        assert username == url.username, "KEDA's username is not the one in redis-url"


# -- the tests ---------------------------------------------------------------------------------


def test_every_manifest_is_a_valid_kubernetes_object(objects: list[Obj]) -> None:
    assert {o["kind"] for o in objects} == {
        "ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "Deployment",
        "PodDisruptionBudget", "ScaledObject",
    }  # fmt: skip
    check_schemas(objects)


def test_keda_scales_the_consumers_on_each_streams_lag(objects: list[Obj]) -> None:
    check_scaled_object(objects)
    check_secret(objects)


def test_every_config_file_loads_and_the_consumers_know_every_shards_feeds(
    objects: list[Obj],
) -> None:
    check_configs(objects)
    (config_map,) = of_kind(objects, "ConfigMap")
    used = {config_file(objects, d)[0] for d in of_kind(objects, "Deployment")}
    assert used == set(config_map["data"]), "a config file no Deployment reads"


def test_probes_and_the_scraped_port_are_the_metrics_port(objects: list[Obj]) -> None:
    check_probes(objects)
    check_service(objects)


def test_each_producer_shard_has_its_own_name_and_spill_volume(objects: list[Obj]) -> None:
    check_selectors(objects)
    check_producers(objects)
    names = {settings_of(objects, d).producer.name for d in deployments(objects, "producer")}
    assert names == {"producer-binance", "producer-okx"}


def test_consumers_roll_and_one_survives_a_drain(objects: list[Obj]) -> None:
    check_consumers(objects)


def test_pods_run_as_the_images_user_and_stop_within_the_grace_period(objects: list[Obj]) -> None:
    assert dockerfile_uid() == 10001
    check_pods(objects)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert "namespace" not in kustomization
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kustomize_builds_the_same_objects() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    names = sorted((o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(built))
    assert names == sorted((o["kind"], o["metadata"]["name"]) for o in load_objects())


# -- and each check can fail -------------------------------------------------------------------


def _pod(objects: list[Obj], deployment: str) -> Obj:
    pod: Obj = named(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    return pod


def _probe(objects: list[Obj], deployment: str, probe: str) -> Obj:
    get: Obj = _pod(objects, deployment)["containers"][0][probe]["httpGet"]
    return get


def _edit_config(objects: list[Obj], key: str, old: str, new: str) -> None:
    data = of_kind(objects, "ConfigMap")[0]["data"]
    assert old in data[key]
    data[key] = data[key].replace(old, new)


def _add_feed(objects: list[Obj], key: str, feed: str) -> None:
    of_kind(objects, "ConfigMap")[0]["data"][key] += f"\n[[feeds]]\n{feed}\n"


def _scaled(objects: list[Obj]) -> Obj:
    spec: Obj = of_kind(objects, "ScaledObject")[0]["spec"]
    return spec


def _pdb_labels(objects: list[Obj]) -> dict[str, str]:
    labels: dict[str, str] = of_kind(objects, "PodDisruptionBudget")[0]["spec"]["selector"][
        "matchLabels"
    ]
    return labels


def _secret(objects: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = of_kind(objects, "Secret")[0]["stringData"]
    return data


Breakage = tuple[Callable[[list[Obj]], None], Callable[[list[Obj]], None], str]

BREAKAGES: dict[str, Breakage] = {
    "an unknown Deployment field": (
        lambda o: named(o, "Deployment", "tickvault-consumer")["spec"].update(replica=3),
        check_schemas,
        "Additional properties",
    ),
    "a probe on another port": (
        lambda o: _probe(o, "producer-okx", "livenessProbe").update(port=9101),
        check_probes,
        "livenessProbe on 9101",
    ),
    "readiness on /healthz": (
        lambda o: _probe(o, "tickvault-consumer", "readinessProbe").update(path="/healthz"),
        check_probes,
        "readinessProbe on /healthz",
    ),
    "two shards with one producer.name": (
        lambda o: _edit_config(o, "producer-okx.toml", '"producer-okx"', '"producer-binance"'),
        check_producers,
        "producer.name shared",
    ),
    "two shards on one spill claim": (
        lambda o: _pod(o, "producer-okx")["volumes"][1]["persistentVolumeClaim"].update(
            claimName="producer-binance-spill"
        ),
        check_producers,
        "spill claim shared",
    ),
    "a rolling producer": (
        lambda o: named(o, "Deployment", "producer-binance")["spec"].update(
            strategy={"type": "RollingUpdate"}
        ),
        check_producers,
        "two producers of a shard",
    ),
    "a PDB that selects no consumer": (
        lambda o: _pdb_labels(o).update({"app.kubernetes.io/component": "consumers"}),
        check_consumers,
        "misses the consumers",
    ),
    "a feed the consumers do not know": (
        lambda o: _edit_config(o, "producer-okx.toml", '"BTC-USDT-PERP"', '"ETH-USDT-PERP"'),
        check_configs,
        "consumers' feeds",
    ),
    "a misspelt config key": (
        lambda o: _edit_config(o, "producer-binance.toml", "spill_fsync", "spill_fsnyc"),
        check_configs,
        "producer.spill_fsnyc",
    ),
    "a trigger without its consumer group": (
        lambda o: _scaled(o)["triggers"][0]["metadata"].pop("consumerGroup"),
        check_scaled_object,
        "lacks {'consumerGroup'}",
    ),
    "a trigger on a stream nobody writes": (
        lambda o: _scaled(o)["triggers"][0]["metadata"].update(stream="tickvault:raw:{kraken}"),
        check_scaled_object,
        "triggers on",
    ),
    "two shards on one symbol": (
        lambda o: _add_feed(o, "producer-okx.toml", 'exchange = "binance"\nsymbols = ["ETH-USDT"]'),
        check_configs,
        "two shards collect the same feed",
    ),
    "KEDA scaling a Deployment that does not exist": (
        lambda o: _scaled(o)["scaleTargetRef"].update(name="consumer"),
        check_scaled_object,
        "Deployment consumer: 0 object",
    ),
    "KEDA on another Redis": (
        lambda o: _secret(o).update({"redis-address": "redis:6380"}),
        check_secret,
        "KEDA reads redis:6380",
    ),
    "KEDA without the password": (
        lambda o: _scaled(o)["triggers"][1]["metadata"].pop("passwordFromEnv"),
        check_secret,
        "KEDA's password",
    ),
    "the pods run as root": (
        lambda o: _pod(o, "tickvault-consumer")["securityContext"].update(runAsUser=0),
        check_pods,
        "runs as 0",
    ),
    "a grace period below the stop budget": (
        lambda o: _pod(o, "producer-binance").update(terminationGracePeriodSeconds=15),
        check_pods,
        "grace 15",
    ),
    "the producers given the database": (
        lambda o: _pod(o, "producer-okx")["containers"][0]["env"].append(
            {"name": "TICKVAULT_DATABASE_URL", "value": "postgresql://x@y/z"}
        ),
        check_pods,
        "producer-okx: database URL True",
    ),
}


@pytest.mark.parametrize(
    ("breaks", "check", "message"), [pytest.param(*b, id=name) for name, b in BREAKAGES.items()]
)
def test_a_broken_manifest_fails_its_check(
    objects: list[Obj],
    breaks: Callable[[list[Obj]], None],
    check: Callable[[list[Obj]], None],
    message: str,
) -> None:
    check(objects)  # whole, it passes ...
    broken = copy.deepcopy(objects)
    breaks(broken)
    with pytest.raises((AssertionError, ConfigError, kubernetes_validate.ValidationError)) as err:
        check(broken)  # ... and broken, it fails for the reason given
    assert message in str(err.value)
