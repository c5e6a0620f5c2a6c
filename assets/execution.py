"""Where steps run: the executor for this environment, and the tags every GPU step carries.

``LIMBER_EXECUTOR=k8s`` (set by deploy/helm/values.yaml) runs each step in its own Kubernetes Job
through dagster-k8s; unset or ``multiprocess`` runs steps as local processes, at most one GPU step at
a time. Across runs, GPU assets also share the instance's ``gpu`` pool (``pool=GPU_POOL``), limited
in deploy/dagster.yaml.
"""

import dagster as dg

from pipeline import settings

EXECUTORS = ("multiprocess", "k8s")
GPU_POOL = "gpu"
GPU_TAG_KEY, GPU_TAG_VALUE = "limber/gpu", "true"

# op_tags=GPU_TAGS: one whole GPU per step pod (requests default to limits for extended resources),
# room for GPT-J's fp16 weights in host memory, and a toleration for the usual GPU-node taint.
GPU_TAGS = {
    GPU_TAG_KEY: GPU_TAG_VALUE,
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": 1},
                "limits": {"memory": "64Gi", "nvidia.com/gpu": 1},
            }
        },
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    },
}

# Every step pod starts from this; GPU_TAGS are merged over it (deep merge) for GPU steps.
STEP_K8S_CONFIG = {
    "container_config": {"resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}}
}


def executor_name() -> str:
    name = settings.executor_name()
    if name not in EXECUTORS:
        raise ValueError(f"{settings.EXECUTOR_ENV}={name!r} is not an executor; choose one of {list(EXECUTORS)}")
    return name


def executor() -> dg.ExecutorDefinition:
    """The executor named by LIMBER_EXECUTOR; LIMBER_MAX_CONCURRENT caps steps at once per run."""
    cap = settings.max_concurrent()
    if executor_name() == "k8s":
        from dagster_k8s import k8s_job_executor

        # GPU steps queue on the instance-wide "gpu" pool, not on a per-run limit.
        return k8s_job_executor.configured({"max_concurrent": cap or 8, "step_k8s_config": STEP_K8S_CONFIG})
    return dg.multiprocess_executor.configured(
        {
            "max_concurrent": cap,  # None: one process per CPU
            "tag_concurrency_limits": [{"key": GPU_TAG_KEY, "value": GPU_TAG_VALUE, "limit": 1}],
        }
    )
