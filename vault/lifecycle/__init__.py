"""Patient rights and the data lifecycle: erasure, legal hold, restriction, retention, exports."""
