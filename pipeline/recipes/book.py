"""Which recipe each line runs now, as every worker sees it.

Lines start with the recipes named in the settings; activations arrive on the compacted
recipes topic, which every worker reads in full (not as a consumer group: each worker must know
every line's recipe, whichever partitions of frames it owns). An activation that does not
validate leaves its line on no runnable recipe: that line's units are then fail-safe rejected
with the reason, never judged by a recipe nobody approved.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from pipeline.kafka.clients import make_consumer
from pipeline.recipes.schema import Recipe, RecipeError, load_recipe, parse_recipe
from pipeline.settings import Settings
from pipeline.wire.messages import MessageError, RecipeActivation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    """A line whose recipe could not be taken: why, and what was asked for."""

    reason: str


class RecipeBook:
    """Thread-safe map line -> active recipe (or the reason there is none it may run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[str, Recipe | Refused] = {}

    def set(self, line: str, recipe: Recipe | Refused) -> None:
        with self._lock:
            self._lines[line] = recipe

    def get(self, line: str) -> Recipe | Refused | None:
        """The line's recipe, `Refused`, or None for a line no recipe was ever given."""
        with self._lock:
            return self._lines.get(line)

    def lines(self) -> dict[str, Recipe | Refused]:
        with self._lock:
            return dict(self._lines)

    def apply(self, key: bytes | None, value: bytes | None) -> str:
        """Take one message of the recipes topic; returns the line it concerned."""
        line = key.decode("utf-8", "replace") if key else ""
        try:
            act = RecipeActivation.from_json(value)
            line = act.line or line
            recipe = parse_recipe(dict(act.recipe), f"activation of line {act.line!r}")
            if recipe.ref != act.recipe_ref or recipe.sha256 != act.sha256:
                raise RecipeError(act.recipe_ref, [f"content hash {recipe.sha256[:12]} differs from the "
                                                   f"activated {act.sha256[:12]} (changed in transit?)"])
        except (MessageError, RecipeError) as exc:
            if line:
                self.set(line, Refused(f"recipe activation refused: {exc}"))
            log.error("recipe activation for line %r refused: %s", line, exc)
            return line
        self.set(line, recipe)
        log.info("line %s runs recipe %s (sha256 %s, by %s)", line, recipe.ref, recipe.sha256[:12], act.user)
        return line


def load_defaults(settings: Settings, book: RecipeBook, repository: Path | None = None) -> None:
    """Give each line of `settings.stream.line_recipes` its recipe file (or the reason it cannot)."""
    folder = settings.stream.recipes_dir
    for line, recipe_id in settings.stream.line_recipes.items():
        try:
            book.set(line, load_recipe(folder / f"{recipe_id}.toml", repository))
        except RecipeError as exc:
            log.error("line %s: %s", line, exc)
            book.set(line, Refused(str(exc)))


class RecipeFeed:
    """Reads the recipes topic from its beginning into a `RecipeBook`, in a daemon thread."""

    def __init__(self, settings: Settings, book: RecipeBook, poll_s: float = 0.2) -> None:
        self._settings = settings
        self._book = book
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recipe-feed", daemon=True)

    def start(self) -> RecipeFeed:
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once every activation published before the start has been applied."""
        return self._caught_up.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _consumer(self) -> tuple[Consumer, dict[int, int]]:
        kafka = self._settings.kafka
        topic = kafka.topic_recipes
        # Never commits and assigns every partition itself: a private group id only because
        # librdkafka wants one.
        consumer = make_consumer(kafka, f"linesight-recipes-{uuid.uuid4().hex[:12]}", "linesight-recipe-feed")
        meta = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"recipes topic {topic!r} not found: {meta.error if meta else 'absent'}")
        parts = sorted(meta.partitions)
        ends: dict[int, int] = {}
        for p in parts:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        return consumer, ends

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                consumer, ends = self._consumer()
            except Exception as exc:  # noqa: BLE001 - broker not there yet: retry, never die
                log.warning("recipe feed: %s; retrying", exc)
                self._stop.wait(1.0)
                continue
            try:
                if not ends:
                    self._caught_up.set()
                while not self._stop.is_set():
                    msg = consumer.poll(self._poll_s)
                    if msg is None:
                        continue
                    err = msg.error()
                    if err:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("recipe feed: %s", err)
                        continue
                    self._book.apply(msg.key(), msg.value())
                    p, off = msg.partition(), msg.offset()
                    # A consumed message (not an error event) always has its partition and offset.
                    assert p is not None and off is not None
                    if p in ends and off + 1 >= ends[p]:
                        del ends[p]
                        if not ends:
                            self._caught_up.set()
            finally:
                consumer.close()
