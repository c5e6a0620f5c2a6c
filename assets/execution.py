"""Where steps run: the executor for this environment, and the tags every GPU step carries.

``LIMBER_EXECUTOR=k8s`` (set by deploy/helm/values.yaml) runs each step in its own Kubernetes Job
through dagster-k8s: a training step's pod asks for the profile's ``gpus.training`` GPUs of one
node, every other GPU step's for one, so extraction and evaluation fan out across nodes. Unset or
``multiprocess`` runs steps as local processes, as many GPU steps at once as the machine has GPUs
(``pipeline.gpus.gpu_count``), each on GPUs it leases for itself (``Runtime.torch_devices``). Across
runs, GPU assets also share the instance's ``gpu`` pool (``pool=GPU_POOL``), limited in
deploy/dagster.yaml.
"""

import dagster as dg

from pipeline import settings
from pipeline.gpus import gpu_count

EXECUTORS = ("multiprocess", "k8s")
GPU_POOL = "gpu"
GPU_TAG_KEY, GPU_TAG_VALUE = "limber/gpu", "true"


def gpu_tags(gpus: int = 1) -> dict:
    """op_tags of a step on ``gpus`` GPUs of one node: whole GPUs for its pod (requests default to
    limits for extended resources), 8 CPUs per GPU for the data loading, room for one copy of GPT-J's
    weights in host memory per GPU (each data-parallel process loads its own), and a toleration for
    the usual GPU-node taint."""
    return {
        GPU_TAG_KEY: GPU_TAG_VALUE,
        "dagster-k8s/config": {
            "container_config": {
                "resources": {
                    "requests": {"cpu": str(8 * gpus), "memory": f"{48 * gpus}Gi", "nvidia.com/gpu": gpus},
                    "limits": {"memory": f"{64 * gpus}Gi", "nvidia.com/gpu": gpus},
                }
            },
            "pod_spec_config": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            },
        },
    }


GPU_TAGS = gpu_tags(1)  # extraction, captions, VQA answers, readout
TRAINING_GPU_TAGS = gpu_tags(settings.active_profile()["gpus"]["training"])  # linear_map, adapters

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
            # One GPU step per GPU (one on a machine without: as many would only share its CPU).
            "tag_concurrency_limits": [{"key": GPU_TAG_KEY, "value": GPU_TAG_VALUE, "limit": max(1, gpu_count())}],
        }
    )
