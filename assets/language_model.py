"""The frozen language model, prepared once as a fast-loading checkpoint under the storage root."""

import dagster as dg

from assets.inputs import stored_result
from assets.resources import Runtime
from pipeline.language_models import prepare_language_model


@dg.asset(group_name="models", kinds={"pytorch"})
def language_model(context: dg.AssetExecutionContext, runtime: Runtime) -> dg.MaterializeResult:
    """The frozen causal LM the linear map writes into (SmolLM2-135M on the embedded default).

    Keyed by its weights' fingerprint: prepared again only when the weights change."""
    directory = runtime.layout.language_model(runtime.language_model)
    mirror = runtime.mirror(directory)
    before = runtime.prepared_lm()
    context.log.info(f"preparing {runtime.language_model} in {directory}")
    description = prepare_language_model(runtime.language_model, mirror.pull())
    mirror.push()
    return stored_result(directory, description["fingerprint"], before == description, **description)
