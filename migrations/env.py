"""Alembic's environment, run by Flask-Migrate (``flask --app wsgi db upgrade``): the engine and
metadata are core's database handle (``core.db``), configured by the app the command runs in;
Flask-Migrate hands over the context options (batch mode, type comparison)."""
import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

from core.db import db

config = context.config
fileConfig(config.config_file_name)
logger = logging.getLogger('alembic.env')

config.set_main_option('sqlalchemy.url',
                       db.engine.url.render_as_string(hide_password=False).replace('%', '%%'))
target_metadata = db.metadata


def run_migrations_offline():
    """Emit the SQL for the configured URL instead of running it (``db upgrade --sql``)."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run the migrations on a connection of core's engine."""

    # an autogenerate that finds no change writes no empty revision
    # (http://alembic.zzzcomputing.com/en/latest/cookbook.html)
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, 'autogenerate', False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info('No changes in schema detected.')

    conf_args = current_app.extensions['migrate'].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    with db.engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, **conf_args)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
