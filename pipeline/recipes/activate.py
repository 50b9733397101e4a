"""Switching a line to a recipe at run time: authenticated, audited, published (docs/recipes.md).

The recipe is validated against the model repository first; the activation (with the whole
recipe and its hash) is published to the compacted recipes topic and confirmed by the broker
before the audit record says it happened. Workers pick it up within a poll interval.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.audit.record import AuditEvent, AuditRecord
from pipeline.audit.trail import AuditTrail
from pipeline.auth.guard import Guard, Principal
from pipeline.core.times import now_ns
from pipeline.kafka.clients import flush_or_raise, make_producer
from pipeline.recipes.book import RecipeBook, RecipeFeed
from pipeline.recipes.schema import Recipe, RecipeError, load_recipe
from pipeline.settings import Settings
from pipeline.wire.messages import RecipeActivation

PERMISSION = "recipe.activate"


def recipe_path(settings: Settings, recipe_id: str) -> Path:
    return settings.stream.recipes_dir / f"{recipe_id}.toml"


def list_recipes(settings: Settings) -> list[tuple[Path, Recipe | RecipeError]]:
    """Every recipe file of the folder, validated (a bad one is listed with its problems)."""
    out: list[tuple[Path, Recipe | RecipeError]] = []
    for path in sorted(settings.stream.recipes_dir.glob("*.toml")):
        try:
            out.append((path, load_recipe(path, settings.triton.model_repository)))
        except RecipeError as exc:
            out.append((path, exc))
    return out


def current_recipes(settings: Settings, timeout_s: float = 10.0) -> dict[str, str]:
    """line -> active recipe ref (or the refusal), as the workers see it from the topic."""
    book = RecipeBook()
    feed = RecipeFeed(settings, book).start()
    try:
        feed.wait_caught_up(timeout_s)
    finally:
        feed.stop()
    return {line: getattr(r, "ref", None) or f"refused: {getattr(r, 'reason', '')}" for line, r in book.lines().items()}


def publish_activation(settings: Settings, activation: RecipeActivation, timeout_s: float = 10.0) -> None:
    producer = make_producer(settings.kafka, "linesight-recipes")
    producer.produce(settings.kafka.topic_recipes, key=activation.line.encode(), value=activation.to_json())
    flush_or_raise(producer, timeout_s)


def activate_recipe(
    settings: Settings, trail: AuditTrail, guard: Guard, who: Principal, line: str, recipe_id: str, reason: str,
    previous: str = "",
) -> tuple[RecipeActivation, AuditRecord]:
    """Validate, publish and audit one switch of `line` to `recipe_id`; refusals are audited too."""
    guard.authorize(who, PERMISSION, line)
    if not reason.strip():
        raise guard.refuse(who.username, who.role, PERMISSION, line, "a reason is required to switch a line's recipe")
    if not line.strip():
        raise guard.refuse(who.username, who.role, PERMISSION, line, "a line is required")
    try:
        recipe = load_recipe(recipe_path(settings, recipe_id), settings.triton.model_repository)
    except RecipeError as exc:
        trail.record(AuditEvent(f"{PERMISSION}.refused", subject=line, user=who.username, role=who.role,
                                old_value=previous, new_value=recipe_id, reason=reason,
                                detail={"problems": exc.problems}))
        raise
    activation = RecipeActivation(
        line=line, recipe=recipe.to_dict(), recipe_ref=recipe.ref, sha256=recipe.sha256,
        user=who.username, reason=reason, activated_ns=now_ns(),
    )
    publish_activation(settings, activation)
    record = trail.record(AuditEvent(
        PERMISSION, subject=line, user=who.username, role=who.role, old_value=previous, new_value=recipe.ref,
        reason=reason, detail={"recipe": recipe.ref, "sha256": recipe.sha256, "product": recipe.product},
    ))
    return activation, record
