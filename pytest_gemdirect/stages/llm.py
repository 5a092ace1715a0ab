"""Stage 2, LLM health (marker ``llm``): the model is listed and a tiny completion answers in time."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_gemdirect.llm import HealthResult, LLMClient, LLMError, check_health
from pytest_gemdirect.services import ServiceError
from pytest_gemdirect.stages.context import StageContext, as_json
from pytest_gemdirect.stages.pipeline import StageFailed, StageSkipped


@dataclass(frozen=True)
class LLMHealth:
    """A healthy LLM: the client the story stage uses and what the health check found."""

    client: LLMClient
    health: HealthResult


def _client(ctx: StageContext) -> LLMClient:
    try:
        backend = ctx.services.llm()
    except ServiceError as exc:
        raise StageFailed(f"LLM: {exc}") from None
    ctx.summary.set_backend("llm", backend.to_dict())
    return LLMClient(
        backend.url,
        api_key=ctx.settings.llm_api_key,
        timeout_s=ctx.settings.llm_timeout,
        max_body_bytes=ctx.max_body_bytes,
        recorder=ctx.services.recorder,
    )


def check(ctx: StageContext) -> LLMHealth:
    settings = ctx.settings
    if settings.story_mode == "fallback" and not settings.llm_url:
        raise StageSkipped("story mode is fallback and no --llm-url is set: no LLM is used")
    client = _client(ctx)
    try:
        health = check_health(client, model=settings.llm_model, timeout_s=settings.llm_timeout)
    except LLMError as exc:
        ctx.summary.set_section("llm", {"healthy": False, "error": str(exc)})
        raise StageFailed(f"LLM health: {exc}") from None
    ctx.summary.set_section("llm", {"healthy": True, **as_json(health)})
    return LLMHealth(client, health)
