"""Signed webhooks to the clinic's own systems (recall notices on withdrawal and erasure)."""
