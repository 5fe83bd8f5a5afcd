"""campaigns: campaign settings and bounce events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('campaign_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('iomad_company_id', sa.Integer(), nullable=True),
    sa.Column('moodle_prefix', sa.String(length=20), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('company_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_campaign_settings_company_id_companies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_settings')),
    sa.UniqueConstraint('company_id', name=op.f('uq_campaign_settings_company_id'))
    )
    with op.batch_alter_table('campaign_settings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaign_settings_company_id'), ['company_id'], unique=False)

    op.create_table('bounce_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_key', sa.String(length=255), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('recipient_id', sa.Integer(), nullable=True),
    sa.Column('detail', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('company_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_bounce_events_company_id_companies'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_bounce_events_job_id_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['recipient_id'], ['recipients.id'], name=op.f('fk_bounce_events_recipient_id_recipients'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bounce_events')),
    sa.UniqueConstraint('company_id', 'event_key', name=op.f('uq_bounce_events_company_id'))
    )
    with op.batch_alter_table('bounce_events', schema=None) as batch_op:
        batch_op.create_index('ix_bounce_events_company_created', ['company_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounce_events_company_id'), ['company_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounce_events_job_id'), ['job_id'], unique=False)


def downgrade():
    with op.batch_alter_table('bounce_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bounce_events_job_id'))
        batch_op.drop_index(batch_op.f('ix_bounce_events_company_id'))
        batch_op.drop_index('ix_bounce_events_company_created')

    op.drop_table('bounce_events')
    with op.batch_alter_table('campaign_settings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaign_settings_company_id'))

    op.drop_table('campaign_settings')
