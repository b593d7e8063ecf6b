"""Alembic environment of the tier history store: migrations run on the connection the store
hands over (``serving.history.migrate``), never from a URL of their own."""

from __future__ import annotations

from alembic import context

from serving.history import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the history migrations run through serving.history.migrate(engine), which passes "
        "the connection"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,  # its own name: the database may be shared (e.g. with MLflow)
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
)
with context.begin_transaction():
    context.run_migrations()
