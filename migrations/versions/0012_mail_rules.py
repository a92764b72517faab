"""Mail rules (who / what / when → actions): the MSP's baseline and each tenant's rules, a tenant's opt-outs of
baseline defaults, directory group memberships (the rules' "LDAP group" condition), and a delivery row's next hop
when a rule reroutes it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 04:00:00
"""
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'mail_rule',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('tenant_id', sa.Integer(), nullable=True),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('direction', sa.String(length=10), nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('locked', sa.Boolean(), nullable=False),
        sa.Column('definition', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_mail_rule_tenant_id_tenant'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_rule')),
    )
    op.create_index(op.f('ix_mail_rule_tenant_id'), 'mail_rule', ['tenant_id'])
    op.create_table(
        'mail_rule_optout',
        sa.Column('tenant_id', sa.Integer(), nullable=False),
        sa.Column('rule_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_mail_rule_optout_tenant_id_tenant'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['rule_id'], ['mail_rule.id'], name=op.f('fk_mail_rule_optout_rule_id_mail_rule'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('tenant_id', 'rule_id', name=op.f('pk_mail_rule_optout')),
    )
    op.create_table(
        'directory_group_member',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('tenant_id', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('group_name', sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'],
                                name=op.f('fk_directory_group_member_tenant_id_tenant'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_directory_group_member')),
    )
    op.create_index('ix_directory_group_member_tenant_address', 'directory_group_member', ['tenant_id', 'address'])
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_hop', sa.String(length=300), nullable=True))
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verdict_before_rules', sa.String(length=20), nullable=True))
    # The shipped baseline rules, all inactive (tenants/mailrules/defaults.py says why), as they were at this revision.
    rule = sa.table('mail_rule', sa.column('tenant_id', sa.Integer), sa.column('name', sa.String),
                    sa.column('priority', sa.Integer), sa.column('direction', sa.String),
                    sa.column('active', sa.Boolean), sa.column('locked', sa.Boolean),
                    sa.column('definition', sa.Text), sa.column('created_at', sa.DateTime(timezone=True)),
                    sa.column('updated_at', sa.DateTime(timezone=True)))
    now = datetime.now(UTC)
    op.bulk_insert(rule, [
        {"tenant_id": None, "name": name, "priority": priority, "direction": direction, "active": False,
         "locked": False, "definition": json.dumps(definition), "created_at": now, "updated_at": now}
        for name, priority, direction, definition in _DEFAULTS
    ])


_DEFAULTS = [
    ("Block viruses", 90, "both", {
        "match": "all", "what": {"match": "any", "invert": False, "items": [{"virus": True}]},
        "actions": [{"quarantine": {"kind": "attachment", "reason": "virus {virus}"}}]}),
    ("Quarantine dangerous attachments", 80, "inbound", {
        "match": "all", "what": {"match": "any", "invert": False, "items": [
            {"symbol": "ATTACH_DANGEROUS"}, {"symbol": "ATTACH_DOUBLE_EXT"}, {"symbol": "OFFICE_MACRO_SUSPICIOUS"}]},
        "actions": [{"quarantine": {"kind": "attachment", "reason": "dangerous attachment"}}]}),
    ("Tag external mail", 20, "inbound", {
        "match": "all", "from": {"match": "any", "invert": False, "items": [{"internal": False}]},
        "actions": [{"add_header": {"name": "X-External-Sender", "value": "{sender}"}},
                    {"tag_subject": {"tag": "[EXTERNAL]"}}]}),
    ("Outbound disclaimer", 10, "outbound", {
        "match": "all",
        "actions": [{"disclaimer": {"text": "This message was sent by {sender} and checked by the mail gateway.",
                                    "position": "bottom", "signed": "skip"}}]}),
]


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('verdict_before_rules')
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_column('next_hop')
    op.drop_index('ix_directory_group_member_tenant_address', table_name='directory_group_member')
    op.drop_table('directory_group_member')
    op.drop_table('mail_rule_optout')
    op.drop_index(op.f('ix_mail_rule_tenant_id'), table_name='mail_rule')
    op.drop_table('mail_rule')
