"""What crashed writers leave behind, and its clean-up: writer leases on blobs being
written, the one registry of tables that reference a blob, and the periodic sweep."""
