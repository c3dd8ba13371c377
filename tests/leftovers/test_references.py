"""The registry of blob references is complete: every model column that holds a blob
id (named ``blob_id`` or ``*_blob_id``, or the id of a table of blobs) is listed, so
the leftover sweep can never delete a blob that a new table references."""

from vault.leftovers.references import BLOB_REFERENCES
from vault.models import Base


def test_every_column_that_references_a_blob_is_registered():
    found = set()
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if column.name == "blob_id" and table.name == "blob_writes":
                continue  # the writer leases themselves
            if column.name == "blob_id" or column.name.endswith("_blob_id"):
                found.add((table.name, column.name))
        if table.name.endswith("_blobs"):
            found.add((table.name, "id"))
    registered = {(model.__tablename__, column) for model, column in BLOB_REFERENCES}
    assert found == registered, "add the column to vault/leftovers/references.py BLOB_REFERENCES"
