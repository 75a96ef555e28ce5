"""Alembic environment: runs against the connection handed over by `cio_sync.store.db.upgrade`."""

from alembic import context

from cio_sync.store.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI use: build an engine from the configured URL
    from cio_sync.store.db import make_engine

    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    connection = engine.connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
