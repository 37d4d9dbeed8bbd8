"""Alembic environment: the engine comes from controller.store.migrate, never from a URL here."""

from alembic import context

from controller.store import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
