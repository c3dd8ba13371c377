from tests.pipeline.conftest import exiftool, yunet_model  # noqa: F401  (shared fixtures)
