"""Bulk statements for the inventory upsert: thousands of rows in or out per statement, past SQLAlchemy's
per-row parameter and result processing (at 10k rows that costs more than the databases' own work).

SQLAlchemy still builds and quotes every statement, and values are always bound parameters, never SQL text.
Only the values take a shortcut, converted here into the form each backend stores: SQLite gets one driver
`executemany`, PostgreSQL one JSON document that the server unpacks itself (`json_to_recordset`). A set of
keys is bound the same way, as one JSON array, so no IN list needs chunking. Values read back are converted
exactly as the column types would convert them (the tests compare both paths). A TypeDecorator may
define `bulk_store(dialect)` / `bulk_load(dialect)`: direct conversions to and from the driver's value, for
when composing its `process_*` methods with the base type's conversion is too slow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Connection,
    Date,
    DateTime,
    Dialect,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    cast,
    column,
    func,
    select,
    type_coerce,
)
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.sql import Select, TableClause
from sqlalchemy.sql import table as table_clause
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType, TypeDecorator, TypeEngine

Convert = Callable[[Any], Any]

_RAW = NullType()  # a column coerced to it comes back exactly as the driver returned it
_DOCUMENT = "rows"  # name of the bound JSON document on PostgreSQL


def dump_json(value: Any) -> str:
    """The engines' JSON serializer too: the bulk path stores exactly what SQLAlchemy would."""
    return orjson.dumps(value).decode()


def among(dialect_name: str, key: ColumnElement[Any], values: Iterable[str]) -> ColumnElement[bool]:
    """`key IN (values)` with every value in one bound JSON array: one statement for any number of keys."""
    array = bindparam(None, dump_json(list(values)), type_=Text)
    if _supported(dialect_name) == "postgresql":
        return key.in_(select(func.json_array_elements_text(cast(array, JSON))))
    return key.in_(select(func.json_each(array).table_valued("value").c.value))


def among_integers(dialect_name: str, key: ColumnElement[Any], values: Iterable[int]) -> ColumnElement[bool]:
    """`key IN (values)` for an integer column (an ASN), the values bound as one JSON array like `among`."""
    array = bindparam(None, dump_json(sorted({int(value) for value in values})), type_=Text)
    if _supported(dialect_name) == "postgresql":
        return key.in_(select(cast(func.json_array_elements_text(cast(array, JSON)), BigInteger)))
    return key.in_(select(func.json_each(array).table_valued("value").c.value))


def fetch(conn: Connection, query: Select[Any]) -> list[tuple[Any, ...]]:
    """The rows of `query`, each value as its column type would return it, converted in bulk."""
    selected = list(query.selected_columns)
    readers = [_reader(item.type, conn.dialect) for item in selected]
    raw = query.with_only_columns(*(type_coerce(item, _RAW) for item in selected))
    return _converted(conn.execute(raw).all(), readers)


def insert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    update: Sequence[str] = (),
) -> int:
    """INSERT the `columns` of `rows` into `table` in one statement; with `update`, an upsert that sets those
    columns of a row whose primary key exists already. Returns the number of rows written."""

    def statement(values: Mapping[str, ColumnElement[Any]], dialect_name: str) -> Any:
        target = _bare(table, columns)
        if dialect_name == "postgresql":
            built = postgresql.insert(target).from_select(list(columns), select(*(values[name] for name in columns)))
        else:
            built = sqlite.insert(target).values({name: values[name] for name in columns})
        if not update:
            return built
        return built.on_conflict_do_update(
            index_elements=_key(table), set_={name: built.excluded[name] for name in update}
        )

    return _execute(conn, table, rows, columns, statement)


def update(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> int:
    """UPDATE the `columns` of existing rows of `table` in one statement, each row found by its primary key
    (which `columns` includes). Returns the number of rows written."""
    keys = _key(table)

    def statement(values: Mapping[str, ColumnElement[Any]], _dialect_name: str) -> Any:
        target = _bare(table, columns)
        return (
            sql_update(target)
            .where(*(target.c[key] == values[key] for key in keys))
            .values({name: values[name] for name in columns if name not in keys})
        )

    return _execute(conn, table, rows, columns, statement)


_Build = Callable[[Mapping[str, ColumnElement[Any]], str], Any]


def _supported(dialect_name: str) -> str:
    if dialect_name not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"the inventory supports SQLite and PostgreSQL, not {dialect_name}")
    return dialect_name


def _execute(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], build: _Build
) -> int:
    if not rows:
        return 0
    if _supported(conn.dialect.name) == "postgresql":
        return _execute_postgresql(conn, table, rows, columns, build)
    return _execute_sqlite(conn, table, rows, columns, build)


def _execute_sqlite(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], build: _Build
) -> int:
    parameters = {f"bulk_{name}": name for name in columns}  # own names: column names are reserved in SET
    statement = build({name: bindparam(key) for key, name in parameters.items()}, "sqlite")
    compiled = statement.compile(dialect=conn.dialect)
    order = [parameters[key] for key in compiled.positiontup or ()]
    if sorted(order) != sorted(columns):
        raise RuntimeError(f"unexpected parameters {order} for the columns {list(columns)}")
    values = _stored(conn.dialect, table, rows, order, compiled.string)
    # Tuples go to sqlite3's executemany as they are: binding happens in C, once per value.
    return int(conn.exec_driver_sql(compiled.string, values).rowcount)


def _execute_postgresql(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], build: _Build
) -> int:
    # A JSON column travels as its text, a string in the document, and is cast back: unpacked as a nested
    # object instead, PostgreSQL would reject a \u0000 escape that its json type stores.
    json_columns = {name for name in columns if _is_json(table.c[name].type)}
    records = (
        func.json_to_recordset(cast(bindparam(_DOCUMENT, type_=Text), JSON))
        .table_valued(*(column(name, Text if name in json_columns else table.c[name].type) for name in columns))
        .render_derived(name="bulk_rows", with_types=True)
    )
    values = {name: cast(records.c[name], JSON) if name in json_columns else records.c[name] for name in columns}
    statement = build(values, "postgresql")
    values = _stored(conn.dialect, table, rows, columns, statement)
    try:
        document = dump_json([dict(zip(columns, row, strict=True)) for row in values])
    except orjson.JSONEncodeError as error:
        raise _unserializable(error, statement) from error
    return int(conn.execute(statement, {_DOCUMENT: document}).rowcount)


def _bare(table: Table, columns: Sequence[str]) -> TableClause:
    # Just the named columns, without their defaults: SQLAlchemy adds nothing, the rows are complete.
    return table_clause(table.name, *(column(name) for name in columns), schema=table.schema)


def _key(table: Table) -> list[str]:
    return [key.name for key in table.primary_key]


def _stored(
    dialect: Dialect, table: Table, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], statement: object
) -> list[tuple[Any, ...]]:
    """The `columns` of `rows` as tuples of the values each backend stores."""
    writers = [_writer(table.c[name].type, dialect) for name in columns]
    try:
        return _converted(_values(rows, columns), writers)
    except orjson.JSONEncodeError as error:
        raise _unserializable(error, statement) from error


def _unserializable(error: orjson.JSONEncodeError, statement: object) -> StatementError:
    # The error SQLAlchemy raises when a JSON column's value cannot be serialized: callers see no difference.
    return StatementError(f"({type(error).__name__}) {error}", str(statement), None, error)


def _values(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[tuple[Any, ...]]:
    if len(names) == 1:  # itemgetter of one name returns the bare value
        return [(row[names[0]],) for row in rows]
    return list(map(itemgetter(*names), rows))


def _converted(rows: Sequence[Sequence[Any]], converters: Sequence[Convert | None]) -> list[tuple[Any, ...]]:
    """`rows` with each column passed through its converter (None: as it is), as tuples."""
    if not rows or all(convert is None for convert in converters):
        return [tuple(row) for row in rows]
    # Column by column: map() runs each converter over its column without a Python loop per value.
    columns: list[Iterable[Any]] = list(zip(*rows, strict=True))
    for index, convert in enumerate(converters):
        if convert is not None:
            columns[index] = map(convert, columns[index])
    return list(zip(*columns, strict=True))


def _writer(type_: TypeEngine[Any], dialect: Dialect) -> Convert | None:
    """Python value -> the value bound for the column (SQLite) or put in the JSON document (PostgreSQL)."""
    if hasattr(type_, "bulk_store"):
        return type_.bulk_store(dialect)
    base = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
    store = _store_sqlite(base) if dialect.name == "sqlite" else _store_postgresql(base)
    if not isinstance(type_, TypeDecorator):
        return store
    return _then(functools.partial(type_.process_bind_param, dialect=dialect), store)


def _reader(type_: TypeEngine[Any], dialect: Dialect) -> Convert | None:
    """The value the driver returns -> the Python value SQLAlchemy would return for the column."""
    if hasattr(type_, "bulk_load"):
        return type_.bulk_load(dialect)
    base = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
    load = _load_sqlite(base) if dialect.name == "sqlite" else _load_postgresql(base)
    if not isinstance(type_, TypeDecorator):
        return load
    return _then(load, functools.partial(type_.process_result_value, dialect=dialect))


def _then(first: Convert | None, second: Convert | None) -> Convert | None:
    """`second(first(value))`, where a missing step (None) leaves the value as it is."""
    if first is None or second is None:
        return second or first
    return lambda value: second(first(value))


def _store_sqlite(type_: TypeEngine[Any]) -> Convert | None:
    # SQLAlchemy's SQLite storage formats: "YYYY-MM-DD HH:MM:SS.ffffff" (wall time), "YYYY-MM-DD", JSON text.
    if isinstance(type_, DateTime):
        return _sqlite_datetime
    if isinstance(type_, Date):
        return _sqlite_date
    if isinstance(type_, JSON):
        return dump_json  # None too: a JSON column stores Python None as JSON null, as SQLAlchemy does
    return _plain(type_)


def _load_sqlite(type_: TypeEngine[Any]) -> Convert | None:
    if isinstance(type_, DateTime):
        return _or_none(datetime.fromisoformat)
    if isinstance(type_, Date):
        return _or_none(date.fromisoformat)
    if isinstance(type_, JSON):
        return _or_none(orjson.loads)
    if isinstance(type_, Boolean):
        return _or_none(bool)
    return _plain(type_)


def _store_postgresql(type_: TypeEngine[Any]) -> Convert | None:
    # orjson writes datetimes (with their offset), dates, booleans and numbers natively.
    if isinstance(type_, JSON):
        return dump_json  # as for SQLite, Python None becomes JSON null
    return None if isinstance(type_, DateTime | Date) else _plain(type_)


def _load_postgresql(type_: TypeEngine[Any]) -> Convert | None:
    # psycopg2 returns typed values; JSON is parsed by the deserializer SQLAlchemy registers on connect.
    return None if isinstance(type_, DateTime | Date | JSON) else _plain(type_)


def _is_json(type_: TypeEngine[Any]) -> bool:
    return isinstance(type_.impl_instance if isinstance(type_, TypeDecorator) else type_, JSON)


def _plain(type_: TypeEngine[Any]) -> None:
    if not isinstance(type_, String | Integer | Boolean):
        raise TypeError(f"no bulk conversion for column type {type_!r}")
    return None


def _or_none(convert: Convert) -> Convert:
    return lambda value: None if value is None else convert(value)


def _sqlite_datetime(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_date(value: date | None) -> str | None:
    return None if value is None else value.isoformat()
