"""The job runner (``vault worker``) and the jobs. Jobs call the vault's domain
services; ``vault/`` never imports this package except where the CLI starts a worker."""
