"""HTTP plumbing shared by every domain's views: routing, JSON, middlewares, OpenAPI."""
