"""The frozen language model, prepared once as a fast-loading checkpoint under the storage root."""

import dagster as dg

from assets.inputs import stored_result
from assets.resources import Limber
from pipeline.language_models import prepare_language_model


@dg.asset(group_name="models", kinds={"pytorch"})
def language_model(context: dg.AssetExecutionContext, limber: Limber) -> dg.MaterializeResult:
    """The frozen causal LM the linear map writes into (SmolLM2-135M on the embedded default).

    Keyed by its weights' fingerprint: prepared again only when the weights change."""
    directory = limber.layout.language_model(limber.language_model)
    mirror = limber.mirror(directory)
    before = limber.prepared_lm()
    context.log.info(f"preparing {limber.language_model} in {directory}")
    description = prepare_language_model(limber.language_model, mirror.pull())
    mirror.push()
    return stored_result(directory, description["fingerprint"], before == description, **description)
