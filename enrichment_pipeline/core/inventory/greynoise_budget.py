"""The GreyNoise request budget of each UTC day, counted in the inventory database (`greynoise_daily_usage`)
so that every run and process shares it."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from enrichment_pipeline.core.inventory.schema import GREYNOISE_USAGE


class GreyNoiseDailyBudget:
    """GreyNoise requests per UTC day, counted in the inventory database so every run and process shares them.

    A pass reserves the most it could send, then gives back what it did not use: concurrent passes never
    together exceed `daily_limit`, and a crash errs on the side of asking less.
    """

    def __init__(self, engine: Engine, daily_limit: int) -> None:
        if daily_limit < 0:
            raise ValueError(f"daily_limit must not be negative, got {daily_limit}")
        self.engine = engine  # its schema created (`create_schema`), like every inventory table
        self.daily_limit = daily_limit

    def used(self, day: date) -> int:
        with self.engine.connect() as conn:
            used = conn.scalar(select(GREYNOISE_USAGE.c.requests).where(GREYNOISE_USAGE.c.day == day))
        return int(used or 0)

    def left(self, day: date) -> int:
        return max(0, self.daily_limit - self.used(day))

    def reserve(self, day: date, wanted: int) -> int:
        """Take up to `wanted` requests of `day`'s budget; return how many were granted."""
        if wanted <= 0:
            return 0
        self._ensure_row(day)
        # One relative UPDATE is atomic on both backends: whoever pushes the count past the limit gets less.
        total = self._add(day, wanted)
        granted = max(0, wanted - max(0, total - self.daily_limit))
        if granted < wanted:
            self._add(day, granted - wanted)
        return granted

    def give_back(self, day: date, unused: int) -> None:
        if unused > 0:
            self._add(day, -unused)

    def _add(self, day: date, delta: int) -> int:
        usage = GREYNOISE_USAGE.c
        statement = (
            update(GREYNOISE_USAGE)
            .where(usage.day == day)
            .values(requests=usage.requests + delta)
            .returning(usage.requests)
        )
        with self.engine.begin() as conn:
            return int(conn.execute(statement).scalar_one())

    def _ensure_row(self, day: date) -> None:
        dialect_insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(self.engine.dialect.name)
        if dialect_insert is None:
            raise NotImplementedError(
                f"the GreyNoise budget supports SQLite and PostgreSQL, not {self.engine.dialect.name}"
            )
        with self.engine.begin() as conn:
            conn.execute(dialect_insert(GREYNOISE_USAGE).values(day=day, requests=0).on_conflict_do_nothing())
