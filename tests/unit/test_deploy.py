"""deploy/: the compose file and Dockerfile say what the README promises (no Docker engine here,
so their syntax and shape are checked)."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_file_parses_and_scales_consumers() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "producer", "consumer", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):  # started only with --profile observability
        assert services[name]["profiles"] == ["observability"]
        for mount in services[name]["volumes"]:
            source = mount.split(":")[0]
            assert source in compose["volumes"] or (DEPLOY / source).exists()
    consumer = services["consumer"]
    assert "container_name" not in consumer and "ports" not in consumer  # --scale works
    assert consumer["command"][0] == "consumer" and services["producer"]["command"][0] == "producer"
    assert services["producer"]["image"] == consumer["image"]  # one image
    for name in ("producer", "consumer"):
        service = services[name]
        assert service["stop_grace_period"] == "30s"
        for mount in service["volumes"]:
            source = mount.split(":")[0]
            assert source in compose["volumes"] or (DEPLOY / source).exists()
    assert any("spill" in mount for mount in services["producer"]["volumes"])
    redis_conf = (DEPLOY / "redis.conf").read_text()
    assert "appendfsync everysec" in redis_conf and "maxmemory-policy noeviction" in redis_conf
    assert all("healthcheck" in services[s] for s in ("redis", "postgres"))
    assert (DEPLOY / services["producer"]["build"]["context"]).resolve() == DEPLOY.parent


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER tickvault" in text and "HEALTHCHECK" in text
    assert "127.0.0.1:9100/healthz" in text  # progress, not just a live metrics thread
    assert 'ENTRYPOINT ["tickvault"]' in text
    for path in ("common", "producer", "consumer", "pyproject.toml"):
        assert f"COPY {path}" in text


def test_embedded_redis_persists_like_the_deployed_one() -> None:
    """The embedded server (tests, demo, bench) and deploy/redis.conf rewrite the AOF alike."""
    from common.servers import AOF_REWRITE

    conf = dict(
        line.split(None, 1)
        for line in (DEPLOY / "redis.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    embedded = dict(zip(AOF_REWRITE[::2], AOF_REWRITE[1::2], strict=True))
    assert embedded == {
        f"--{k}": conf[k] for k in ("auto-aof-rewrite-min-size", "auto-aof-rewrite-percentage")
    }


def test_the_example_config_loads() -> None:
    from common.config import load_settings

    settings = load_settings(DEPLOY / "tickvault.example.toml", env={})
    assert settings.producer.spill_dir == "/var/lib/tickvault/spill"
    assert settings.redis.retention_s == 24 * 3600
