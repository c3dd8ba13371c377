"""Staff accounts of the web app: one login per person per tenant, argon2id passwords,
TOTP second factor, server-side sessions (docs/staff.md)."""
