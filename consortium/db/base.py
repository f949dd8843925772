"""Declarative base shared by every coordinator model."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import DateTime, MetaData, select
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# Stable constraint names so that Alembic revisions are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


#: Largest random id: fits the INTEGER primary keys of SQLite and PostgreSQL.
RANDOM_ID_MAX = 2**31 - 1


def random_id(context) -> int:
    """Column default of ids other parties see: random in [1, 2**31-1], not sequential.

    So an id tells nothing about how many submissions, proposals, tokens... exist or
    when; a candidate already in the table is drawn again (the primary key catches a
    concurrent insert of the same one).
    """
    column = context.current_column
    for _ in range(100):
        candidate = secrets.randbelow(RANDOM_ID_MAX) + 1
        taken = context.connection.execute(select(column).where(column == candidate)).first()
        if taken is None:
            return candidate
    raise RuntimeError(f"no free random id in {column.table.name} after 100 draws")
