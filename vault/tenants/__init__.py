"""Tenants (clinics), their API tokens and roles."""
