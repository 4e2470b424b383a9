"""Alembic upgrade() operations -> expand / contract / unknown (deploytools.alembic_ops)."""
from __future__ import annotations

import pytest

from deploytools.alembic_ops import changed_migrations, classify

HEAD = '''"""add things

Revision ID: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"


def upgrade():
'''
DOWN = '''

def downgrade():
    op.drop_column("post", "tags")  # downgrade() is not what a deploy runs
'''


@pytest.mark.parametrize("body,expected", [
    ('    op.add_column("post", sa.Column("tags", sa.Text(), nullable=True))', [("add_column", "expand")]),
    ('    op.create_table("tag", sa.Column("id", sa.Integer(), primary_key=True))', [("create_table", "expand")]),
    ('    op.create_index("ix_post_title", "post", ["title"])', [("create_index", "expand")]),
    ('    op.drop_index("ix_post_title")', [("drop_index", "expand")]),
    ('    op.drop_column("post", "body")', [("drop_column", "contract")]),
    ('    op.drop_table("tag")', [("drop_table", "contract")]),
    ('    op.rename_table("tag", "label")', [("rename_table", "contract")]),
    ('    op.drop_constraint("uq_title", "post")', [("drop_constraint", "contract")]),
    ('    op.alter_column("post", "title", nullable=False)', [("alter_column(nullable=False)", "contract")]),
    ('    op.alter_column("post", "title", nullable=False, server_default="")', [("alter_column", "expand")]),
    ('    op.alter_column("post", "title", nullable=True)', [("alter_column", "expand")]),
    ('    op.alter_column("post", "title", new_column_name="name")', [("alter_column(new_column_name=...)", "contract")]),
    ('    op.alter_column("post", "n", type_=sa.BigInteger())', [("alter_column(type_=...)", "unknown")]),
    ('    op.execute("UPDATE post SET tags = \'\'")', [("execute", "unknown")]),
    ('    with op.batch_alter_table("post") as batch_op:\n        batch_op.drop_column("body")\n'
     '        batch_op.add_column(sa.Column("x", sa.Integer()))',
     [("batch_alter_table", "expand"), ("drop_column", "contract"), ("add_column", "expand")]),
    ('    pass', []),
])
def test_classify_upgrade_operations(body, expected):
    found = classify("migrations/versions/0002_x.py", HEAD + body + "\n" + DOWN)
    assert [(f.op, f.verdict) for f in found] == expected
    assert all(f.path == "migrations/versions/0002_x.py" and f.line > 10 for f in found)


def test_unparsable_or_without_upgrade_is_unknown():
    (f,) = classify("m/1.py", "def upgrade(:\n")
    assert f.verdict == "unknown" and "cannot parse" in f.op
    (f,) = classify("m/2.py", "x = 1\n")
    assert (f.op, f.verdict) == ("upgrade()", "unknown")
    assert str(classify("m/3.py", HEAD + '    op.drop_table("t")\n')[0]) == \
        "m/3.py:13: op.drop_table (contract)"


def test_changed_migrations_are_python_files_under_the_path():
    files = ["migrations/versions/0002_a.py", "migrations/versions/__init__.py",
             "migrations/env.py", "migrations/versions/README", "app/models.py",
             "migrations/versions_old/1.py"]
    assert changed_migrations(files, "migrations/versions/") == ["migrations/versions/0002_a.py"]
