"""Deploy files generated from the one ``CascadeConfig``: the Ray Serve config file
(``serve run`` / ``serve deploy``) and the KubeRay ``RayService`` manifest that embeds it.

``cascade export-serve-config`` writes them; each file's first line is the command that
regenerated it, and ``--check`` reports a file that no longer matches its source.

Usage::

    config = load_config("deploy/cascade.yaml")
    text = render(serve_config(config), "cascade export-serve-config --config deploy/cascade.yaml")
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config import CascadeConfig, ConfigError, ModelDeploymentConfig

APP_BUILDER = "serving.app:app_builder"  # the import path Serve calls with the file's `args`
ROUTE_PREFIX = "/"
# host, port and the app's name go to the Serve config's own fields, not into `args`; the proxy
# is chosen by the Ray processes' environment (ProxyConfig.ray_env), set where Ray starts
SERVE_LEVEL_FIELDS = {"host", "port", "app_name", "proxy"}


def builder_args(config: CascadeConfig) -> dict[str, Any]:
    """The settings the config source set explicitly (every other field keeps its default
    when the app is built, so defaults stay in ``CascadeConfig`` alone; an unset ``home``
    resolves to ``$CASCADE_HOME`` where the app is built, not where the file was written)."""
    return config.model_dump(mode="json", exclude_unset=True, exclude=SERVE_LEVEL_FIELDS)


def serve_config(config: CascadeConfig) -> dict[str, Any]:
    """A Ray Serve config file (``ServeDeploySchema``) for one cascade application."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.host, "port": config.port},
        "applications": [
            {
                "name": config.app_name,
                "route_prefix": ROUTE_PREFIX,
                "import_path": APP_BUILDER,
                "args": builder_args(config),
            }
        ],
    }


class KubeRayOptions(BaseModel):
    """What a RayService adds to the Serve config: the image, the pods, the shared home."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("distill-cascade", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # the RayService's name
    image: str = "distill-cascade:latest"  # built from the repository's Dockerfile
    home_mount: str = "/var/lib/cascade"  # CASCADE_HOME in every pod (the Dockerfile's too)
    home_claim: str = "cascade-home"  # a ReadWriteMany PersistentVolumeClaim holding the registry and the log
    fs_group: int = 10001  # the Dockerfile's user: the volume is made writable for this group
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    worker_cpu: str = "4"
    worker_memory: str = "16Gi"
    worker_gpus: int = Field(1, ge=1)  # GPUs per worker pod
    workers: int = Field(1, ge=1)  # GPU worker pods
    max_workers: int = Field(1, ge=1)  # the autoscaler's ceiling for the GPU group


def kuberay_options(assignments: list[str]) -> KubeRayOptions:
    """``KubeRayOptions`` from ``KEY=VALUE`` strings (the CLI's ``--set``); ConfigError names a bad one."""
    try:
        values = dict(assignment.split("=", 1) for assignment in assignments)
    except ValueError:
        raise ConfigError(f"--set: expected KEY=VALUE, got {assignments}") from None
    try:
        return KubeRayOptions.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"--set: {problems}") from err


def _gpus_wanted(settings: ModelDeploymentConfig) -> float:
    """GPUs one model deployment reserves at its largest."""
    if settings.num_replicas == "auto":
        replicas = settings.autoscaling_config().get("max_replicas", 1)  # Serve's default ceiling: 1
    else:
        replicas = settings.num_replicas
    return settings.num_gpus * replicas


def _container(name: str, options: KubeRayOptions, ports: dict[str, int], resources: dict[str, str],
               env: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "image": options.image,
        "env": [{"name": "CASCADE_HOME", "value": options.home_mount}] + [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports.items()],
        "resources": {"limits": resources, "requests": resources},
        "volumeMounts": [{"name": "cascade-home", "mountPath": options.home_mount}],
    }


def _pod(container: dict[str, Any], options: KubeRayOptions, gpu: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": {"fsGroup": options.fs_group},
        "containers": [container],
        "volumes": [{"name": "cascade-home", "persistentVolumeClaim": {"claimName": options.home_claim}}],
    }
    if gpu:  # GPU nodes are usually tainted so that only GPU work lands there
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": spec}


def rayservice(config: CascadeConfig, options: KubeRayOptions) -> dict[str, Any]:
    """A KubeRay ``RayService`` (``ray.io/v1``): a head group, a GPU worker group, and the
    Serve config of ``config`` as ``serveConfigV2``. Refuses a config whose deployments want
    more GPUs than the worker group can ever have."""
    wanted = _gpus_wanted(config.student) + _gpus_wanted(config.teacher)
    available = options.worker_gpus * options.max_workers
    if wanted > available:
        raise ConfigError(f"the student and teacher want {wanted:g} GPUs, the worker group has at most {available}")
    if options.max_workers < options.workers:
        raise ConfigError(f"max_workers ({options.max_workers}) must be >= workers ({options.workers})")
    metrics = {"metrics-export-port": str(config.metrics.port)}
    env = config.proxy.ray_env()  # every Ray process of every pod starts with the proxy's settings
    head = _container(
        "ray-head", options,
        {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": config.port, "metrics": config.metrics.port},
        {"cpu": options.head_cpu, "memory": options.head_memory}, env,
    )
    worker = _container(
        "ray-worker", options,
        {"serve": config.port, "metrics": config.metrics.port},
        {"cpu": options.worker_cpu, "memory": options.worker_memory, "nvidia.com/gpu": str(options.worker_gpus)}, env,
    )
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": options.name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(config), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": version("ray"),  # the image must carry the same Ray (the Dockerfile's RAY_VERSION)
                "enableInTreeAutoscaling": options.max_workers > options.workers,  # Serve's replicas add worker pods
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", **metrics},
                    "template": _pod(head, options, gpu=False),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu",
                        "replicas": options.workers,
                        "minReplicas": options.workers,
                        "maxReplicas": options.max_workers,
                        "rayStartParams": metrics,
                        "template": _pod(worker, options, gpu=True),
                    }
                ],
            },
        },
    }


class _BlockStrings(yaml.SafeDumper):
    """Writes multi-line strings (the embedded Serve config) as readable ``|`` blocks, and
    repeated values in full rather than as YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_BlockStrings.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def render(document: dict[str, Any], command: str, ray_env: dict[str, str] | None = None) -> str:
    """The file's text: a header naming the command that regenerates it (and, for a Serve config,
    the environment Ray must start with: ``serve run`` cannot set it), then the YAML."""
    header = (
        f"# Generated by `{command}`\n"
        "# from serving.config.CascadeConfig: edit the --config file and rerun the command, not this file.\n"
    )
    if ray_env:
        assignments = " ".join(f"{name}={value}" for name, value in ray_env.items())
        header += f"# Start Ray (`ray start`, or `serve run` on a new local cluster) with: {assignments}\n"
    return header + yaml.dump(document, Dumper=_BlockStrings, sort_keys=False)

