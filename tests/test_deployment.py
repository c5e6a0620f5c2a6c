"""The Kubernetes deployment: deploy/dagster.yaml, deploy/helm/values.yaml and assets/execution.py.

Everything is checked against the schemas and code of the installed dagster / dagster-k8s /
dagster-postgres; nothing needs a cluster, a Postgres server or helm.
"""

import importlib
import json
import os
import time
import tomllib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import ConcurrencyConfig, PoolGranularity, dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator import QueuedRunCoordinator

from assets.execution import GPU_POOL, GPU_TAGS, STEP_K8S_CONFIG, TRAINING_GPU_TAGS, executor, gpu_tags

# dagster_k8s and dagster_postgres are imported inside the tests that use them: the real-run test
# below re-imports this module in each step process, and they would add seconds to every step.

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INSTANCE_ENV = {
    "DAGSTER_PG_HOST": "pg.example.internal",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "s3cret",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_K8S_JOB_NAMESPACE": "limber-jobs",
    "DAGSTER_K8S_SERVICE_ACCOUNT": "limber-runner",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
    "LIMBER_IMAGE": "registry.example/limber-pipeline:abc123",
}


@pytest.fixture
def instance_env(monkeypatch):
    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def ref(instance_env) -> InstanceRef:
    return InstanceRef.from_dir(str(DEPLOY), config_filename="dagster.yaml")


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def raw_instance_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def resolve(class_data, expected_base):
    """Import a ConfigurableClassData's class and process its config with the class's own schema."""
    cls = getattr(importlib.import_module(class_data.module_name), class_data.class_name)
    assert issubclass(cls, expected_base)
    result = process_config(cls.config_type(), yaml.safe_load(class_data.config_yaml))
    assert result.success, [error.message for error in result.errors]
    return result.value


# --- deploy/dagster.yaml -------------------------------------------------------------------------


def test_instance_yaml_validates_against_dagsters_schema(instance_env):
    config, custom_instance_class = dagster_instance_config(str(DEPLOY), config_filename="dagster.yaml")
    assert custom_instance_class is None
    assert config["telemetry"] == {"enabled": False}
    assert "postgres" in config["storage"]
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_run_launcher_is_k8s_with_env_resolved_config(ref):
    from dagster_k8s import K8sRunLauncher

    assert (ref.run_launcher_data.module_name, ref.run_launcher_data.class_name) == ("dagster_k8s", "K8sRunLauncher")
    config = resolve(ref.run_launcher_data, K8sRunLauncher)
    assert config["load_incluster_config"] is True
    assert config["job_namespace"] == "limber-jobs"
    assert config["service_account_name"] == "limber-runner"
    assert config["instance_config_map"] == "dagster-instance"
    assert config["postgres_password_secret"] == "dagster-postgresql-secret"
    assert config["job_image"] == "registry.example/limber-pipeline:abc123"
    assert set(config["env_vars"]) == {"DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_DB"}


def test_run_launcher_config_needs_its_env_vars(ref, monkeypatch):
    from dagster_k8s import K8sRunLauncher

    monkeypatch.delenv("DAGSTER_K8S_SERVICE_ACCOUNT")
    result = process_config(K8sRunLauncher.config_type(), yaml.safe_load(ref.run_launcher_data.config_yaml))
    assert not result.success
    assert "DAGSTER_K8S_SERVICE_ACCOUNT" in " ".join(error.message for error in result.errors)


def test_storage_is_postgres_with_env_credentials(ref):
    from dagster_postgres import DagsterPostgresStorage

    assert (ref.storage_data.module_name, ref.storage_data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")
    db = resolve(ref.storage_data, DagsterPostgresStorage)["postgres_db"]
    assert db["hostname"] == "pg.example.internal"
    assert (db["username"], db["password"], db["db_name"], db["port"]) == ("dagster", "s3cret", "dagster", 5432)


def test_queued_run_coordinator_and_gpu_pool_limit(ref):
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    run_queue = QueuedRunCoordinator.from_config_value(
        ref.run_coordinator_data, resolve(ref.run_coordinator_data, QueuedRunCoordinator)
    ).get_run_queue_config()
    concurrency = ConcurrencyConfig.from_concurrency_settings(ref.settings["concurrency"], run_queue)
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.pool_config.pool_granularity == PoolGranularity.OP
    assert concurrency.run_queue_config.max_concurrent_runs == 16
    assert ref.settings["telemetry"] == {"enabled": False}


def test_gpu_pool_gets_one_slot_in_a_real_instance(tmp_path):
    """The same concurrency settings in a (sqlite) instance: the "gpu" pool is initialized to 1 slot."""
    config = raw_instance_yaml()
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    del config["run_launcher"]  # it would load a kubeconfig
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.global_op_concurrency_default_limit == 1
        assert instance.event_log_storage.initialize_concurrency_limit_to_default(GPU_POOL)
        info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
        assert info.slot_count == 1


# --- assets/execution.py -------------------------------------------------------------------------


def executor_config(definition: dg.ExecutorDefinition) -> dict:
    """The configured executor's config, processed by Dagster against the executor's own schema."""
    result = definition.apply_config_mapping({})
    assert result.success, [error.message for error in result.errors]
    return result.value["config"]


def test_k8s_executor(monkeypatch):
    from dagster_k8s import k8s_job_executor

    monkeypatch.setenv("LIMBER_EXECUTOR", "k8s")
    monkeypatch.delenv("LIMBER_MAX_CONCURRENT", raising=False)
    definition = executor()
    assert definition.name == "k8s"
    assert definition.executor_creation_fn is k8s_job_executor.executor_creation_fn
    config = executor_config(definition)
    assert config["max_concurrent"] == 8
    assert config["step_k8s_config"]["container_config"] == STEP_K8S_CONFIG["container_config"]


@pytest.mark.parametrize("gpus, limit", [("1", 1), ("0", 1), ("8", 8)])
def test_local_executor_runs_one_gpu_step_per_gpu(monkeypatch, gpus, limit):
    monkeypatch.delenv("LIMBER_EXECUTOR", raising=False)
    monkeypatch.setenv("LIMBER_MAX_CONCURRENT", "4")
    monkeypatch.setenv("LIMBER_GPUS", gpus)
    definition = executor()
    assert definition.name == "multiprocess"
    assert definition.executor_creation_fn is dg.multiprocess_executor.executor_creation_fn
    config = executor_config(definition)
    assert config["max_concurrent"] == 4
    assert config["tag_concurrency_limits"] == [{"key": "limber/gpu", "value": "true", "limit": limit}]
    # the limit matches the tag GPU steps carry
    assert GPU_TAGS["limber/gpu"] == TRAINING_GPU_TAGS["limber/gpu"] == "true"


@pytest.mark.parametrize("value", ["celery", "K8S", "docker"])
def test_invalid_executor_is_an_error(monkeypatch, value):
    monkeypatch.setenv("LIMBER_EXECUTOR", value)
    with pytest.raises(ValueError, match=r"LIMBER_EXECUTOR.*'multiprocess', 'k8s'"):
        executor()


def _gpu_asset():
    @dg.asset(op_tags=GPU_TAGS, pool=GPU_POOL)
    def gpu_step() -> None: ...

    return gpu_step


def test_gpu_tags_parse_as_dagster_k8s_config():
    from dagster_k8s.job import get_user_defined_k8s_config

    tags = _gpu_asset().op.tags  # what the step handler sees: tag values normalized to strings
    assert tags["limber/gpu"] == "true"
    assert json.loads(tags["dagster-k8s/config"]) == GPU_TAGS["dagster-k8s/config"]
    user_config = get_user_defined_k8s_config(tags)
    assert user_config.container_config["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _gpu_asset().op.pool == "gpu"


def _step_job(tags):
    """The Kubernetes Job the k8s executor would build for a step with these tags (as K8sStepHandler does)."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(STEP_K8S_CONFIG))
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    return construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="limber-pipeline:test", dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-x",
        pod_name="dagster-step-x",
        user_defined_k8s_config=context.run_k8s_config,
        component="step_worker",
    )


def test_gpu_step_pod_requests_a_gpu_and_other_steps_do_not():
    gpu_pod = _step_job(_gpu_asset().op.tags).spec.template.spec
    resources = gpu_pod.containers[0].resources
    assert resources.limits["nvidia.com/gpu"] == "1"
    assert resources.requests["memory"] == "48Gi"
    assert any(t.key == "nvidia.com/gpu" for t in gpu_pod.tolerations)

    cpu_pod = _step_job({}).spec.template.spec
    assert "nvidia.com/gpu" not in (cpu_pod.containers[0].resources.limits or {})
    assert cpu_pod.containers[0].resources.requests == {"cpu": "1", "memory": "4Gi"}


def test_a_training_step_pod_asks_for_the_profiles_gpus_on_one_node():
    from assets.adapters import adapters
    from assets.linear_map import linear_map
    from pipeline.settings import PROFILES

    assert PROFILES["paper"]["gpus"]["training"] == 8 and PROFILES["default"]["gpus"]["training"] == 1
    for asset in (linear_map, adapters):
        assert json.loads(asset.op.tags["dagster-k8s/config"]) == TRAINING_GPU_TAGS["dagster-k8s/config"]
    pod = _step_job(_tags_as_dagster_sees_them(gpu_tags(8))).spec.template.spec
    resources = pod.containers[0].resources
    assert resources.limits["nvidia.com/gpu"] == resources.requests["nvidia.com/gpu"] == "8"
    assert resources.requests["cpu"] == "64" and resources.requests["memory"] == "384Gi"
    assert any(t.key == "nvidia.com/gpu" for t in pod.tolerations)


def _tags_as_dagster_sees_them(tags: dict) -> dict:
    @dg.asset(op_tags=tags)
    def step() -> None: ...

    return step.op.tags


# A real local run: two GPU-tagged ops with no dependency between them must not overlap.
@dg.op(tags=GPU_TAGS)
def _gpu_op_a() -> None:
    _record("a")


@dg.op(tags=GPU_TAGS)
def _gpu_op_b() -> None:
    _record("b")


def _record(name: str) -> None:
    start = time.time()
    time.sleep(0.5)
    Path(os.environ["LIMBER_TEST_TIMES"], name).write_text(json.dumps([start, time.time()]))


def _two_gpu_ops_job():
    @dg.job(executor_def=executor())
    def two_gpu_ops():
        _gpu_op_a()
        _gpu_op_b()

    return two_gpu_ops


def test_local_executor_serializes_gpu_steps_in_a_real_run(tmp_path, monkeypatch):
    monkeypatch.delenv("LIMBER_EXECUTOR", raising=False)
    monkeypatch.setenv("LIMBER_GPUS", "1")
    monkeypatch.setenv("LIMBER_TEST_TIMES", str(tmp_path))
    with dg.instance_for_test() as instance:
        job = dg.build_reconstructable_job(
            "test_deployment", "_two_gpu_ops_job", reconstructor_working_directory=str(Path(__file__).parent)
        )
        result = dg.execute_job(job, instance=instance)
        assert result.success
    (a_start, a_end), (b_start, b_end) = (json.loads((tmp_path / n).read_text()) for n in "ab")
    assert a_end <= b_start or b_end <= a_start, "two GPU steps ran at the same time"


# A real local run on a machine with 2 (fake) GPUs: two GPU steps run at once, each on its own GPU.
@dg.op(tags=GPU_TAGS, required_resource_keys={"runtime"})
def _leasing_op_a(context) -> None:
    _record_lease(context, "a")


@dg.op(tags=GPU_TAGS, required_resource_keys={"runtime"})
def _leasing_op_b(context) -> None:
    _record_lease(context, "b")


def _record_lease(context, name: str) -> None:
    """Leases a GPU, then waits (up to a minute) until the other op holds one too: both ops hold
    their GPUs at the same time only if the executor runs them side by side."""
    folder = Path(os.environ["LIMBER_TEST_TIMES"])
    device = context.resources.runtime.torch_device()
    (folder / f"{name}.leased").write_text(device)
    other = folder / ("b.leased" if name == "a" else "a.leased")
    deadline = time.time() + 60
    while not other.exists() and time.time() < deadline:
        time.sleep(0.1)
    (folder / name).write_text(json.dumps([device, other.exists()]))


def _two_leasing_ops_job():
    from assets.resources import Runtime

    @dg.job(
        executor_def=executor(), resource_defs={"runtime": Runtime(device="cuda", cache_dir=os.environ["LIMBER_CACHE"])}
    )
    def two_leasing_ops():
        _leasing_op_a()
        _leasing_op_b()

    return two_leasing_ops


def test_local_executor_runs_a_gpu_step_per_gpu_each_on_its_own(tmp_path, monkeypatch):
    monkeypatch.delenv("LIMBER_EXECUTOR", raising=False)
    monkeypatch.setenv("LIMBER_GPUS", "2")
    monkeypatch.setenv("LIMBER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIMBER_TEST_TIMES", str(tmp_path))
    with dg.instance_for_test() as instance:
        job = dg.build_reconstructable_job(
            "test_deployment", "_two_leasing_ops_job", reconstructor_working_directory=str(Path(__file__).parent)
        )
        result = dg.execute_job(job, instance=instance)
        assert result.success
        logs = [event.message for event in instance.all_logs(result.run_id) if event.message]
    (a_device, a_met_b), (b_device, b_met_a) = (json.loads((tmp_path / n).read_text()) for n in "ab")
    assert a_met_b and b_met_a, "the two GPU steps did not hold their GPUs at the same time"
    assert {a_device, b_device} == {"cuda:0", "cuda:1"}
    assert sum("this step computes on GPU(s)" in message for message in logs) == 2  # shown in the UI's logs


# --- deploy/helm/values.yaml ---------------------------------------------------------------------


def test_helm_values_name_the_code_location(values):
    assert values["dagster-user-deployments"]["enabled"] is True
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["image"]["repository"] == "limber-pipeline"
    module = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", module] == ["-m", "assets.definitions"]
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == module


def test_helm_values_env_runs_the_paper_profile_on_k8s(values, monkeypatch):
    from dagster_k8s import k8s_job_executor

    from pipeline.settings import PROFILES

    env = values["dagster-user-deployments"]["deployments"][0]["env"]
    assert all(isinstance(value, str) for value in env.values())  # k8s env values must be strings
    assert env["LIMBER_PROFILE"] == "paper" and "paper" in PROFILES
    assert env["LIMBER_STORAGE"].startswith("s3://")
    assert env["HF_HUB_OFFLINE"] == "1"
    # With the deployment's env the code location picks the Kubernetes executor.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert executor().executor_creation_fn is k8s_job_executor.executor_creation_fn


def test_helm_values_match_the_instance_yaml(values):
    instance = raw_instance_yaml()
    launcher = values["runLauncher"]
    assert launcher["type"] == instance["run_launcher"]["class"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert k8s["loadInclusterConfig"] is instance["run_launcher"]["config"]["load_incluster_config"] is True
    assert k8s["resources"] == instance["run_launcher"]["config"]["resources"]
    assert values["global"]["dagsterHome"] == instance["run_launcher"]["config"]["dagster_home"]

    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert values["dagsterDaemon"]["enabled"] and coordinator["enabled"]
    assert coordinator["type"] == instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    assert queued["dequeueIntervalSeconds"] == instance["run_coordinator"]["config"]["dequeue_interval_seconds"]

    assert values["telemetry"]["enabled"] is instance["telemetry"]["enabled"] is False
    assert values["postgresql"]["service"]["port"] == instance["storage"]["postgres"]["postgres_db"]["port"]

    assert values["concurrency"]["enabled"] is True
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    assert pools == {
        "defaultLimit": instance["concurrency"]["pools"]["default_limit"],
        "granularity": instance["concurrency"]["pools"]["granularity"],
        "opGranularityRunBuffer": instance["concurrency"]["pools"]["op_granularity_run_buffer"],
    }
    assert runs == {"maxConcurrentRuns": instance["concurrency"]["runs"]["max_concurrent_runs"]}
