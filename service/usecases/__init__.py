"""The application layer: what the service does, called by the HTTP edge, Ray and tests."""
