"""Media: photos and videos, their encrypted renditions, upload and fetch."""
